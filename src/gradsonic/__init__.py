"""gradsonic: hear your PyTorch model train.

>>> from gradsonic import GradientSonifier
>>> sonifier = GradientSonifier(model, wav="run.wav")   # doctest: +SKIP
>>> optimizer = sonifier.wrap(optimizer)                # doctest: +SKIP
"""

from ._version import __version__
from .errors import (ConfigError, ConfigTypeError, GradsonicError, GradsonicWarning, SinkError,
                     SinkPaused)
from .mapping import LogMapping, Mapping, MappingName, SeedMapping
from .sinks import MemorySink, MLflowSink, Sink, TensorBoardSink, WandbSink, WavFormat, WavSink
from .synth import Synth

# torch is imported only with what needs it: `gradsonic serve`, `info`, `render` and the page's
# server read recordings without it (a file server in ~60 MB, not ~500).
_LAZY = {"ClosedError": "sonifier", "GradientSonifier": "sonifier", "Stats": "pipeline",
         "StepRecord": "norms"}


def __getattr__(name: str):  # PEP 562
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradsonic' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "ClosedError",
    "ConfigError",
    "ConfigTypeError",
    "GradientSonifier",
    "GradsonicError",
    "GradsonicWarning",
    "LogMapping",
    "Mapping",
    "MappingName",
    "MLflowSink",
    "MemorySink",
    "SeedMapping",
    "Sink",
    "SinkError",
    "SinkPaused",
    "TensorBoardSink",
    "Stats",
    "StepRecord",
    "Synth",
    "WandbSink",
    "WavFormat",
    "WavSink",
    "__version__",
]

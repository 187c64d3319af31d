"""gradsonic: hear your PyTorch model train.

>>> from gradsonic import GradientSonifier
>>> sonifier = GradientSonifier(model, wav="run.wav")   # doctest: +SKIP
>>> optimizer = sonifier.wrap(optimizer)                # doctest: +SKIP
"""

from ._version import __version__
from .errors import ConfigError, ConfigTypeError, GradsonicError, GradsonicWarning, SinkError
from .mapping import LogMapping, Mapping, MappingName, SeedMapping
from .sinks import MemorySink, MLflowSink, Sink, TensorBoardSink, WandbSink, WavFormat, WavSink
from .sonifier import ClosedError, GradientSonifier, Stats
from .synth import Synth
from .tap import StepRecord

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
    "TensorBoardSink",
    "Stats",
    "StepRecord",
    "Synth",
    "WandbSink",
    "WavFormat",
    "WavSink",
    "__version__",
]

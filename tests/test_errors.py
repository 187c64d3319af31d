"""Bad input: a clear error at construction that names the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsonic import (ClosedError, ConfigError, ConfigTypeError, GradientSonifier, GradsonicError,
                       LogMapping, SeedMapping, WavSink)

from .fixtures.models import TinyMLP


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"mapping": "cubic"}, ValueError, r"mapping must be one of \['log', 'seed'\], not 'cubic'"),
    ({"mapping": 3}, TypeError, r"mapping must be one of .* or a callable"),
    ({"layers": ["conv*"]}, ValueError, r"layer pattern 'conv\*' matches no module"),
    ({"layers": ["act"]}, ValueError, r"layer 'act' has no parameters of its own or below it"),
    ({"layers": ["a*t"]}, ValueError, r"layer pattern 'a\*t' matches only modules without param"),
    ({"layers": []}, ValueError, r"layers is empty"),
    ({"layers": "fc1"}, TypeError, r"layers must be None or a list"),
    ({"layers": [3]}, TypeError, r"each entry of layers must be .* not int"),
    ({"sample_rate": 0}, ValueError, r"sample_rate must be in \[8000, 768000\] Hz, not 0"),
    ({"sample_rate": 44100.0}, ValueError, r"sample_rate must be an integer"),
    ({"tone_duration": 0}, ValueError, r"tone_duration \(seconds\) must be in \(0, 10\], not 0"),
    ({"tone_duration": -0.01}, ValueError, r"tone_duration .* not -0.01"),
    ({"tone_duration": 1e-6}, ValueError, r"gives a tone of 0 samples"),
    ({"tone_duration": float("nan")}, ValueError, r"tone_duration .* not nan"),
    ({"tone_duration": 1e6}, ValueError, r"tone_duration \(seconds\) must be in \(0, 10\], not 1000000"),
    ({"voices": {}}, ValueError, r"voices=\{\} names no group"),
    ({"sinks": 5}, TypeError, r"sinks must be a list of gradsonic.sinks.Sink objects, not 5"),
    ({"wav": "x.dat", "record": "./x.dat"}, ValueError, r"wav and record are the same file"),
    ({"run_dir": ""}, TypeError, r"run_dir must be a folder path or None, not ''"),
    ({"tone_duration": "10ms"}, TypeError, r"tone_duration \(seconds\) must be a number, not str"),
    ({"silence_duration": -1}, ValueError, r"silence_duration \(seconds\) must be in \[0, 10\]"),
    ({"amplitude": 0}, ValueError, r"amplitude must be in \(0, 1\], not 0"),
    ({"amplitude": 1.5}, ValueError, r"amplitude must be in \(0, 1\], not 1.5"),
    ({"on_step": 5}, TypeError, r"on_step must be a callable or None, not 5"),
    ({"wav_format": "mp3"}, ValueError, r"wav_format must be one of \['float32', 'pcm16'\], not 'mp3'"),
    ({"wav": 42}, TypeError, r"wav must be a path .* not int"),
    ({"wav": "no/such/dir/run.wav"}, ValueError, r"directory 'no/such/dir' does not exist"),
    ({"wav": "."}, ValueError, r"wav must name a file, not the directory '.'"),
    ({"sinks": [object()]}, TypeError, r"sinks must hold gradsonic.sinks.Sink objects"),
    ({"max_pending": 0}, ValueError, r"max_pending must be an integer >= 1, not 0"),
    ({"handle_sigterm": "yes"}, TypeError, r"handle_sigterm must be True or False, not 'yes'"),
    ({"live": "yes"}, TypeError, r"live must be True, False or a LiveSink, not 'yes'"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    kwargs.setdefault("wav", None)
    with pytest.raises(exc, match=match) as info:
        GradientSonifier(TinyMLP(), **kwargs)
    assert isinstance(info.value, GradsonicError)


def test_module_not_inside_the_model():
    with pytest.raises(ValueError, match=r"layer Linear .* is not a submodule of the model"):
        GradientSonifier(TinyMLP(), layers=[nn.Linear(2, 2)], wav=None)


def test_listed_module_without_weight():
    model = TinyMLP()
    with pytest.raises(ValueError, match=r"layer 'act' has no parameters of its own or below it"):
        GradientSonifier(model, layers=[model.act], wav=None)


def test_model_with_no_trainable_weights():
    model = TinyMLP().requires_grad_(False)
    with pytest.raises(ValueError, match=r"model TinyMLP has no trainable parameter yet \(every "
                       r"weight is frozen\); pass layers=\[...\] naming the layers to hear"):
        GradientSonifier(model, wav=None)
    for p in model.parameters():  # only biases train: a different advice
        p.requires_grad_(p.dim() == 1)
    with pytest.raises(ValueError, match=r"no trainable parameter other than biases"):
        GradientSonifier(model, wav=None)


def test_not_a_model():
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, not str"):
        GradientSonifier("resnet", wav=None)


def test_wrap_something_that_is_not_an_optimizer():
    with GradientSonifier(TinyMLP(), wav=None) as son:
        with pytest.raises(TypeError, match=r"wrap\(\) takes a torch.optim.Optimizer or a wrapper .* not list"):
            son.wrap([1, 2])


def test_use_after_close():
    son = GradientSonifier(TinyMLP(), wav=None)
    son.close()
    with pytest.raises(ClosedError, match=r"is closed"):
        son.step()
    with pytest.raises(RuntimeError):
        son.wrap(torch.optim.SGD(TinyMLP().parameters(), lr=0.1))


@pytest.mark.parametrize("make, match", [
    (lambda: LogMapping(min_hz=500, max_hz=100), r"min_hz must be below max_hz"),
    (lambda: LogMapping(center_norm=0), r"LogMapping.center_norm must be in \(0, inf\], not 0"),
    (lambda: SeedMapping(hz_per_unit=-1), r"SeedMapping.hz_per_unit must be in \(0, inf\]"),
    (lambda: WavSink("x.wav", flush_interval=-1), r"flush_interval \(seconds\) must be in \[0, inf\]"),
])
def test_bad_component_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_errors_are_also_builtins():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigTypeError, TypeError)
    assert issubclass(ClosedError, RuntimeError)

"""GradientSonifier end to end: real training steps, norms, WAV layout, hooks, lifecycle."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io.wavfile
import soundfile
import torch
from torch import nn

from gradsonic import GradientSonifier, MemorySink, StepRecord
from gradsonic.synth import Synth

from .fixtures.models import TinyMLP, TwoHeads, batch, train_heads, train_steps

FS = 44100
TONE = 441
STEP = 3 * TONE + 2 * TONE  # three layers, then two tone lengths of silence


def read_scipy(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mis-typed or odd WAV makes scipy warn
        return scipy.io.wavfile.read(path)


def make(model, **kw):
    torch.manual_seed(0)
    return GradientSonifier(model, **kw)


def test_recorded_norms_equal_direct_per_layer_norms():
    torch.manual_seed(0)
    model = TinyMLP()
    records: list[StepRecord] = []
    with GradientSonifier(model, wav="run.wav", on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        direct = train_steps(model, opt, steps=7)
        son.flush()
        assert [r.step for r in records] == list(range(7))
    got = np.stack([r.norms for r in records])
    assert got.dtype == np.float32 and got.shape == (7, 3)
    np.testing.assert_allclose(got, np.array(direct, dtype=np.float32), rtol=1e-5)
    assert records[0].layer_names == ("fc1", "fc2", "head")
    assert not any(r.missing.any() or r.nonfinite.any() for r in records)


def test_wav_is_typed_float32_and_holds_exactly_what_was_rendered():
    model = TinyMLP()
    mem = MemorySink()
    with make(model, wav="run.wav", sinks=[mem]) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=5)
    rate, data = read_scipy("run.wav")
    assert rate == FS and data.dtype == np.float32 and data.shape == (5 * STEP,)
    sf_data, sf_rate = soundfile.read("run.wav", dtype="float32")
    assert sf_rate == FS and soundfile.info("run.wav").subtype == "FLOAT"
    np.testing.assert_array_equal(sf_data, data)
    np.testing.assert_array_equal(data, mem.frames)
    assert np.all(np.isfinite(data)) and np.abs(data).max() <= 0.1 + 1e-7
    # every step ends with two tone lengths of silence; tones are not silent
    steps = data.reshape(5, STEP)
    assert np.all(steps[:, 3 * TONE:] == 0)
    assert np.all(np.abs(steps[:, : 3 * TONE]).reshape(5, 3, TONE).max(axis=2) > 0.05)


def test_wav_pcm16_is_typed_int16_and_quantised_from_the_float_samples():
    model = TinyMLP()
    mem = MemorySink()
    with make(model, wav="run16.wav", wav_format="pcm16", sinks=[mem]) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=3)
    rate, data = read_scipy("run16.wav")
    assert data.dtype == np.int16 and data.shape == (3 * STEP,)
    assert soundfile.info("run16.wav").subtype == "PCM_16"
    np.testing.assert_array_equal(data, np.round(mem.frames * 32767).astype(np.int16))


def test_seed_mapping_samples_follow_the_original_formula():
    model = TinyMLP()
    records = []
    mem = MemorySink()
    with make(model, wav=None, mapping="seed", sinks=[mem], on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=4)
    frames = mem.frames.reshape(4, STEP)
    synth = Synth()
    n = np.arange(TONE)
    fade = synth.fade_samples
    assert fade == 44
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, fade + 1) / (fade + 1))
    env = np.ones(TONE)
    env[:fade], env[-fade:] = ramp, ramp[::-1]
    for s, rec in enumerate(records):
        for layer, norm in enumerate(rec.norms):
            f = 200.0 + 100.0 * float(norm)
            expected = 0.1 * np.sin(2 * np.pi * f * n / FS)
            tone = frames[s, layer * TONE:(layer + 1) * TONE]
            # unfaded middle: exactly the original's formula, to float32 precision
            np.testing.assert_allclose(tone[fade:-fade], expected[fade:-fade], atol=2e-7, rtol=0)
            np.testing.assert_allclose(tone, expected * env, atol=2e-7, rtol=0)


def test_missing_gradient_is_silence_and_recorded_missing():
    model = TwoHeads()
    records = []
    mem = MemorySink()
    with make(model, wav=None, sinks=[mem], on_step=records.append) as son:
        train_heads(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), ["left", "left"])
        son.flush()
        assert son.stats.silent_tones == 2
    assert son.layer_names == ("trunk", "left", "right")
    for r in records:
        assert r.missing.tolist() == [False, False, True]
        assert math.isnan(r.norms[2]) and not r.nonfinite.any()
    step = 3 * TONE + 2 * TONE
    frames = mem.frames.reshape(2, step)
    assert np.all(frames[:, 2 * TONE:3 * TONE] == 0)
    assert np.all(np.abs(frames[:, :2 * TONE]).max(axis=1) > 0.05)


def test_non_finite_norm_plays_the_alarm_never_nan_samples():
    model = TinyMLP()
    mem = MemorySink()
    records = []
    synth = Synth()
    poison = {1: ("fc2", float("nan")), 2: ("head", float("inf")), 3: ("fc1", float("-inf"))}
    with make(model, wav="run.wav", sinks=[mem], on_step=records.append) as son:
        for i in range(5):
            model.zero_grad()
            x, y = batch(model, seed=i)
            ((model(x) - y) ** 2).mean().backward()
            if i in poison:
                name, value = poison[i]
                getattr(model, name).weight.grad[0, 0] = value
            son.step()
        son.flush()
        assert (son.stats.alarm_tones, son.stats.alarm_steps) == (3, 3)
    assert [r.nonfinite.tolist() for r in records] == [
        [False, False, False], [False, True, False], [False, False, True],
        [True, False, False], [False, False, False]]
    frames = mem.frames.reshape(5, STEP)
    assert np.all(np.isfinite(frames))
    np.testing.assert_array_equal(frames[1, TONE:2 * TONE], synth._alarm)
    np.testing.assert_array_equal(frames[2, 2 * TONE:3 * TONE], synth._alarm)
    np.testing.assert_array_equal(frames[3, :TONE], synth._alarm)
    assert not np.array_equal(frames[4, :TONE], synth._alarm)
    _, data = read_scipy("run.wav")
    assert np.all(np.isfinite(data))


def test_huge_norm_plays_at_the_top_of_the_band_with_the_over_range_timbre():
    model = TinyMLP()
    mem = MemorySink()
    with make(model, wav=None, mapping="seed", sinks=[mem]) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
        train_steps(model, opt, steps=1,
                    before_step=lambda i: model.fc1.weight.grad.fill_(1e15))
    tone = mem.frames[:TONE].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(TONE), 8 * TONE))
    peak_hz = np.argmax(spectrum) * FS / (8 * TONE)
    assert abs(peak_hz - 4200) < 200  # the seed mapping's band top, not 0.45 * 44100 = 19.8 kHz
    third = spectrum[round(3 * 4200 * 8 * TONE / FS)]
    assert third > 0.2 * spectrum.max()  # the over-range buzz


def test_manual_step_without_wrap_and_layer_patterns():
    model = TinyMLP()
    records = []
    with make(model, layers=["fc*"], wav=None, on_step=records.append) as son:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        direct = train_steps(model, opt, steps=3, before_step=lambda i: son.step())
        son.flush()
    assert son.layer_names == ("fc1", "fc2")
    np.testing.assert_allclose(np.stack([r.norms for r in records]),
                               np.array(direct, dtype=np.float32)[:, :2], rtol=1e-5)


def test_layers_as_module_list_keep_the_given_order():
    model = TinyMLP()
    with make(model, layers=[model.head, model.fc1], wav=None) as son:
        assert son.layer_names == ("head", "fc1")


def test_wrap_returns_the_same_optimizer_and_detach_removes_every_hook():
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    son = make(model, wav=None)
    try:
        assert son.wrap(opt) is opt
        son.wrap(opt)  # twice: still one hook
        assert len(opt._optimizer_step_pre_hooks) == 1
        train_steps(model, opt, steps=2)
        assert son.steps == 2
        son.detach()
        assert len(opt._optimizer_step_pre_hooks) == 0
        train_steps(model, opt, steps=2)
        assert son.steps == 2
        son.wrap(opt)  # re-attach
        train_steps(model, opt, steps=1)
        assert son.steps == 3
    finally:
        son.close()
    son.close()  # idempotent
    assert len(opt._optimizer_step_pre_hooks) == 0
    assert son.closed


def test_wav_is_streamed_while_training_runs():
    model = TinyMLP()
    son = make(model, wav="live.wav")
    try:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=4)
        son.flush()
        data, _ = soundfile.read("live.wav", dtype="float32")
        assert data.shape == (4 * STEP,)  # on disk, header updated, before close()
        train_steps(model, opt, steps=2)
    finally:
        son.close()
    assert soundfile.info("live.wav").frames == 6 * STEP


def test_script_that_never_closes_still_ends_with_a_complete_wav(tmp_path):
    script = f"""
import torch, sys
sys.path.insert(0, {str(tmp_path.parent)!r})
from gradsonic import GradientSonifier
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
sonifier = GradientSonifier(model, wav="never_closed.wav")
optimizer = sonifier.wrap(optimizer)
for _ in range(300):
    optimizer.zero_grad()
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    rate, data = read_scipy(tmp_path / "never_closed.wav")
    assert data.shape == (300 * (2 * TONE + 2 * TONE),)
    assert np.abs(data).max() > 0.05


def test_frozen_layer_is_silent_and_trainable_default_selection_skips_it():
    model = TinyMLP()
    model.fc2.weight.requires_grad_(False)
    with make(model, wav=None) as son:
        assert son.layer_names == ("fc1", "head")
    records = []
    with make(model, layers=[model.fc1, model.fc2], wav=None, on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
        train_steps(model, opt, steps=2)
        son.flush()
    assert [r.missing.tolist() for r in records] == [[False, True], [False, True]]


def test_low_precision_gradients_are_measured_in_float32():
    model = nn.Linear(64, 64).to(torch.bfloat16)
    records = []
    with make(model, wav=None, on_step=records.append) as son:
        model.weight.grad = torch.full((64, 64), 2000.0, dtype=torch.bfloat16)  # fp16 would overflow
        son.step()
        son.flush()
    assert records[0].norms[0] == pytest.approx(2000.0 * 64, rel=1e-3)


def test_sparse_gradients_are_measured():
    model = nn.Embedding(10, 4, sparse=True)
    records = []
    with make(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
        model(torch.tensor([1, 2, 2])).sum().backward()
        expected = model.weight.grad.to_dense().norm().item()
        opt.step()
        son.flush()
    assert records[0].norms[0] == pytest.approx(expected, rel=1e-5)


def test_many_same_shaped_layers_on_cpu_are_measured_exactly():
    """Same-shaped CPU weights are reduced over one stack: the norms must still be each layer's."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)], nn.Linear(8, 3))
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
        assert any(stacked for _, _, stacked in son._tap._plan(opt).groups)  # stacked path used
        for i in range(3):
            opt.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            direct = [m.weight.grad.norm().item() for m in model]
            opt.step()
        son.flush()
    assert son.layer_names == tuple(str(i) for i in range(7))
    np.testing.assert_allclose(records[-1].norms, direct, rtol=1e-5)

"""A sound that scales: voices grouped by structure, the time budget, accents, every Nth step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradsonic import GradientSonifier, MemorySink
from gradsonic.accents import COLLAPSE, SPIKE, AccentDetector, Accents
from gradsonic.recording import read_recording
from gradsonic.render import frames as render_frames

from .fixtures.models import TinyMLP, train_steps


def deep_residual(n_layers: int = 75, width: int = 16) -> nn.Module:
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))

        def forward(self, x):
            for block in self.blocks:
                x = x + 0.1 * torch.tanh(block(x))
            return x

    return Residual()


def resnet_like() -> nn.Module:
    def block():
        return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),
                             nn.Conv2d(4, 4, 3, padding=1))

    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3))
    for s in range(1, 5):
        model.add_module(f"layer{s}", nn.Sequential(*[block() for _ in range(3)]))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(4, 10))
    return model


@pytest.mark.parametrize("make, expected", [
    (resnet_like, ["stem"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(3)] + ["fc"]),
    (lambda: deep_residual(100), [f"blocks.{a}..{b}" for a, b in [
        (0, 6), (7, 12), (13, 18), (19, 24), (25, 31), (32, 37), (38, 43), (44, 49), (50, 56),
        (57, 62), (63, 68), (69, 74), (75, 81), (82, 87), (88, 93), (94, 99)]]),
])
def test_many_layers_are_grouped_by_structure_within_16_voices_and_200_ms(make, expected):
    model = make()
    with GradientSonifier(model, wav=None) as son:
        assert list(son.layer_names) == expected
        heard = {n for names in son.layer_params for n in names}
        assert heard == {n for n, p in model.named_parameters()
                         if "bias" not in n.rsplit(".", 1)[-1]}
        seconds = son.synth.step_samples(len(son.layer_names)) / son.synth.sample_rate
        assert seconds <= 0.2
        assert "layers" in son.summary().splitlines()[1]


def test_a_group_norm_is_the_norm_of_all_its_gradients_together():
    model = deep_residual(40)
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
        model(torch.randn(5, 16)).pow(2).sum().backward()
        named = dict(model.named_parameters())
        expected = [float(torch.sqrt(sum(named[n].grad.double().pow(2).sum() for n in names)))
                    for names in son.layer_params]
        opt.step()
    assert len(son.layer_names) == 16 and len(son.layer_params[0]) >= 2
    np.testing.assert_allclose(records[0].norms, expected, rtol=1e-5)


def test_voices_all_and_named_groups():
    model = deep_residual(30)
    with GradientSonifier(model, wav=None, voices="all") as son:
        assert len(son.layer_names) == 30
    with GradientSonifier(model, wav=None, voices={"early": "blocks.1?", "late": ["blocks.2?"]}
                          ) as son:
        assert son.layer_names == ("other", "early", "late")
        assert len(son.layer_params[1]) == 10 and len(son.layer_params[2]) == 10
    with pytest.raises(ValueError, match=r"voices group\(s\) \['none'\] match no voice"):
        GradientSonifier(model, wav=None, voices={"none": "nothing*"})
    with pytest.raises(ValueError, match=r"voices must be a number >= 1, 'all', or a dict"):
        GradientSonifier(model, wav=None, voices=0)


def test_the_seed_cnn_keeps_its_four_voices():
    from gradsonic.demo import SeedCNN

    with GradientSonifier(SeedCNN(), wav=None) as son:
        assert son.layer_names == ("conv1", "conv2", "fc1", "fc2")


def test_accents_mark_spikes_and_collapses_against_the_running_median():
    detector = AccentDetector(Accents(window=8, min_history=4))
    norms = np.ones((12, 3), dtype=np.float32)
    norms[6, 0] = 3.5  # 3.5x the median: spike
    norms[7, 1] = 2.5  # only 2.5x: nothing
    norms[8, 2] = 0.0  # collapse
    norms[2, 0] = 50.0  # too early (3 steps of history): nothing
    missing = np.zeros(norms.shape, dtype=bool)
    marks = detector.mark(norms[:5], missing[:5])  # in two blocks: the history carries over
    marks = np.concatenate([marks, detector.mark(norms[5:], missing[5:])])
    expected = np.zeros(norms.shape, dtype=np.uint8)
    expected[6, 0], expected[8, 2] = SPIKE, COLLAPSE
    np.testing.assert_array_equal(marks, expected)


def test_a_planted_spike_is_accented_heard_louder_and_rebuilt_by_render():
    model = TinyMLP()
    mem = MemorySink()
    records = []
    with GradientSonifier(model, wav="run.wav", record="run.gsr", sinks=[mem], quiet=True,
                          on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
        train_steps(model, opt, steps=20,
                    before_step=lambda i: model.fc2.weight.grad.mul_(10.0 if i == 15 else 1.0))
    marks = np.array([r.accents for r in records])
    assert marks[15].tolist() == [0, SPIKE, 0] and marks[:15].sum() == 0
    np.testing.assert_array_equal(read_recording("run.gsr").accents, marks)  # from the file
    step = son.synth.step_samples(3)
    tone = son.synth.tone_samples
    loud = np.abs(mem.frames[15 * step + tone: 15 * step + 2 * tone]).max()
    before = np.abs(mem.frames[14 * step + tone: 14 * step + 2 * tone]).max()
    assert loud > 2.0 * before  # the accented onset and click
    again = np.concatenate(list(render_frames(read_recording("run.gsr"))))
    np.testing.assert_array_equal(again, mem.frames)  # render rebuilds the accents exactly


def test_every_nth_step_is_sounded_and_every_step_recorded():
    model = TinyMLP()
    mem = MemorySink()
    records = []
    with GradientSonifier(model, wav=None, record="run.gsr", sinks=[mem], every=4, quiet=True,
                          on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
        train_steps(model, opt, steps=10)
    assert len(records) == 10 and len(read_recording("run.gsr").steps) == 10
    assert mem.frames.size == 3 * son.synth.step_samples(3)  # steps 0, 4, 8
    again = np.concatenate(list(render_frames(read_recording("run.gsr"))))
    np.testing.assert_array_equal(again, mem.frames)
    with pytest.raises(ValueError, match=r"every must be an integer >= 1"):
        GradientSonifier(model, wav=None, every=0)


def test_plots_decimate_long_runs_by_envelopes_keeping_every_event(tmp_path):
    from gradsonic.plot import decimate, plot_recording
    from gradsonic.recording import Recording

    steps, voices = 100_000, 16
    rng = np.random.default_rng(0)
    norms = rng.uniform(0.5, 1.5, (steps, voices)).astype(np.float32)
    norms[55_555, 3] = 400.0  # one step among 100k: must survive decimation
    norms[77_777, 5] = 0.0  # a dead step
    norms[88_888, 7] = np.nan  # the alarm
    with GradientSonifier(TinyMLP(), wav=None) as son:
        settings = son.settings()
    rec = Recording(tmp_path / "long.gsr", tuple(f"v{i}" for i in range(voices)),
                    np.arange(steps), norms, np.zeros(norms.shape, dtype=bool),
                    np.zeros(steps, dtype=bool), settings)
    d = decimate(rec, max_columns=1500)
    assert len(d["x"]) <= 1500
    b = np.searchsorted(d["x"], [55_555, 77_777, 88_888], side="right") - 1
    assert d["hi"][b[0], 3] == 400.0 and d["spike"][b[0], 3]  # envelope max and its accent
    assert d["dead"][b[1], 5] and d["collapse"][b[1], 5]
    assert d["alarm"][b[2], 7] and d["alarm"].sum() == 1
    plot_recording(rec, tmp_path / "long.png")
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "long.png")
    assert image.shape[0] > 600 and image.shape[1] > 1200


def test_chord_layout_is_stereo_one_tone_per_step_panned_by_depth_in_every_sink():
    import scipy.io.wavfile

    class Spread(nn.Module):  # three layers with very different gradient norms -> pitches
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    torch.manual_seed(0)
    model = Spread()
    mem = MemorySink()
    with GradientSonifier(model, wav="chord.wav", record="chord.gsr", sinks=[mem], quiet=True,
                          layout="chord", tone_duration=0.05, accents=False) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).sum().backward()
            model.a.weight.grad.mul_(1e-3)  # low pitch, voice 0: left
            model.c.weight.grad.mul_(1e3)  # high pitch, voice 2: right
            opt.step()
    step = son.synth.step_samples(3)
    assert son.synth.channels == 2 and step == son.synth.tone_samples + son.synth.silence_samples
    rate, wav = scipy.io.wavfile.read("chord.wav")  # an independent reader
    assert wav.shape == (4 * step, 2) and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, mem.frames)
    tone = wav[: son.synth.tone_samples].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))[:, None], axis=0))
    hz = np.fft.rfftfreq(len(tone), 1 / rate)
    low, high = (np.argmin(abs(hz - f)) for f in son.mapping(np.array(
        [float(model.a.weight.grad.norm()), float(model.c.weight.grad.norm())])))
    assert spectrum[low, 0] > 5 * spectrum[low, 1]  # voice 0 is on the left
    assert spectrum[high, 1] > 5 * spectrum[high, 0]  # the last voice on the right
    again = np.concatenate(list(render_frames(read_recording("chord.gsr"))))
    np.testing.assert_array_equal(again, mem.frames)  # render: stereo, the same samples
    from gradsonic.notebook import audio

    assert "audio/wav" in audio(mem.frames, rate)._repr_html_() or audio(mem.frames, rate).data


def test_chord_layout_plays_bit_exactly_through_real_pyaudio_in_stereo():
    from gradsonic.sinks import LiveSink

    from .conftest import CAPTURE

    model = TinyMLP()
    mem = MemorySink()
    sink = LiveSink(policy="block")
    with GradientSonifier(model, wav=None, live=sink, sinks=[mem], layout="chord") as son:
        assert sink.available and sink._stream.stream._channels == 2  # a real stereo PortAudio stream
        train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.05)), steps=5)
    played = np.fromfile(CAPTURE, dtype="<f4")
    want = mem.frames.reshape(-1)  # interleaved L R, as the device got it
    # every step in full and in order (silence - lead-in, underruns between steps - carries no
    # information and is left out on both sides)
    np.testing.assert_array_equal(played[played != 0], want[want != 0])
    assert sink.stats.played_steps == 5 and sink.stats.frames_played >= mem.frames.shape[0]


def test_the_block_accent_detector_equals_a_step_by_step_nanmedian_reference():
    import warnings

    rng = np.random.default_rng(1)
    steps, voices = 300, 5
    x = rng.lognormal(0, 1.2, (steps, voices)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0
    x[rng.random(x.shape) < 0.03] = np.nan
    missing = rng.random(x.shape) < 0.05
    rule = Accents()
    expected = np.zeros(x.shape, dtype=np.uint8)
    history: list[np.ndarray] = []
    for i in range(steps):
        ok = np.isfinite(x[i]) & ~missing[i]
        past = np.array(history[-rule.window:]) if history else np.full((0, voices), np.nan)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            med = np.nanmedian(past, axis=0) if len(past) else np.full(voices, np.nan)
            known = np.count_nonzero(~np.isnan(past), axis=0)
            spike = ok & (known >= rule.min_history) & (med > 0) & (x[i] >= 3.0 * med)
            collapse = ok & (med > 0) & (x[i] <= 1e-3 * med)
        expected[i] = np.where(spike, SPIKE, 0) | np.where(collapse, COLLAPSE, 0)
        history.append(np.where(ok, x[i], np.nan))
    detector = AccentDetector(rule)
    got = np.concatenate([detector.mark(x[a:b], missing[a:b])
                          for a, b in [(0, 7), (7, 100), (100, 101), (101, 300)]])
    assert expected.sum() > 50
    np.testing.assert_array_equal(got, expected)


# -- long listening: the ambient layout, and alarms that are never quiet ---------------------------


@pytest.fixture(scope="module")
def catastrophe(tmp_path_factory):
    """The listenability benchmark's fixed run: lr x60 at steps 150-169, NaN at step 250."""
    import importlib.util

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("listenability",
                                                  REPO / "benchmarks" / "listenability.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench, read_recording(bench.make_run(tmp_path_factory.mktemp("lr") / "run"))


def test_ambient_is_quiet_and_smooth_while_healthy_and_loud_on_trouble(catastrophe):
    bench, rec = catastrophe
    m = bench.measure(rec, "ambient")
    assert m["healthy"] <= -30.0  # LUFS: a background level
    assert m["roughness"] <= 0.3  # asper: no buzz
    assert m["spike"] >= 10.0  # LU: the learning-rate catastrophe cuts through
    assert m["nan"] >= 10.0  # dB: the NaN step is unmistakable
    assert m["clipped"] == 0.0


@pytest.mark.parametrize("layout", ["sequence", "chord"])
def test_the_nan_alarm_is_clearly_louder_than_healthy_sound_in_every_layout(catastrophe, layout):
    bench, rec = catastrophe
    assert bench.measure(rec, layout)["nan"] >= 6.0


def test_louder_alarms_leave_every_other_sample_as_it_was():
    """The seed sound (non-alarm steps) is untouched by the alarm's new level."""
    from gradsonic.mapping import ALARM, TONE
    from gradsonic.synth import Synth

    rng = np.random.default_rng(1)
    freqs = rng.uniform(200, 2000, (6, 4))
    kinds = np.full((6, 4), TONE, np.int8)
    with_alarm = kinds.copy()
    with_alarm[2, 1] = ALARM
    s = Synth()
    a, b = s.render(freqs, kinds).reshape(6, -1), s.render(freqs, with_alarm).reshape(6, -1)
    T = s.tone_samples
    same = np.ones(a.shape, bool)
    same[2, T:2 * T] = False
    np.testing.assert_array_equal(a[same], b[same])
    alarm = b[2, T:2 * T]
    assert np.sqrt(np.mean(alarm ** 2)) > 2.5 * np.sqrt(np.mean(a[2, T:2 * T] ** 2))


def test_ambient_plays_live_exactly_as_render_rebuilds_it_slices_and_resumes_included(tmp_path):
    model = TinyMLP()
    with GradientSonifier(model, run_dir=tmp_path / "run", layout="ambient", every=3,
                          quiet=True) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, 60)
        model.fc2.weight.grad = None
    with GradientSonifier(model, run_dir=tmp_path / "run", layout="ambient", every=3,
                          quiet=True, resume=True) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, 40)
    import soundfile

    wav, _ = soundfile.read(str(tmp_path / "run" / "run.wav"), dtype="float32")
    rec = read_recording(tmp_path / "run" / "run.gsr")
    full = np.concatenate(list(render_frames(rec)))
    assert wav.shape == full.shape and wav.shape[1] == 2
    np.testing.assert_array_equal(wav, full)
    part = np.concatenate(list(render_frames(rec, steps=slice(31, 77))))
    at = int(rec.sounded()[:31].sum()) * (441 + 882)
    np.testing.assert_array_equal(part, full[at:at + len(part)])
    # continuous: no step starts with a jump (the chord glides, every note is phase-continuous)
    steps = full.reshape(-1, 441 + 882, 2)
    jumps = np.abs(steps[1:, 0] - steps[:-1, -1]).max()
    assert jumps < 0.01, jumps

"""Faults lose nothing already written; odd training loops and odd gradients still make sound."""

from __future__ import annotations

import gc
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import weakref

import numpy as np
import pytest
import scipy.io.wavfile
import soundfile
import torch
from torch import nn

import gradsonic.pipeline as pipeline_module
from gradsonic import GradientSonifier, GradsonicWarning, MemorySink, Sink
from gradsonic.synth import Synth

from .conftest import REPO
from .fixtures.models import TinyMLP, TwoHeads, batch, train_heads, train_steps

CHILD = REPO / "tests" / "child_train.py"
TWO_LAYER_STEP = 2 * 441 + 2 * 441


def header_frames(path) -> int:
    """Frames the WAV header promises, read by hand (independent of our writer and readers)."""
    raw = open(path, "rb").read()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    i = 12
    while i < len(raw):
        cid, size = raw[i:i + 4], struct.unpack("<I", raw[i + 4:i + 8])[0]
        if cid == b"data":
            return size // 4
        i += 8 + size + (size & 1)
    raise AssertionError("no data chunk")


def spawn(mode: str, wav, steps: int | None = None) -> subprocess.Popen:
    args = [sys.executable, str(CHILD), mode, str(wav)] + ([str(steps)] if steps else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(proc: subprocess.Popen, n: int) -> list[str]:
    lines = []
    while len(lines) < n:
        line = proc.stdout.readline()
        assert line, f"child ended early: {proc.stderr.read()}"
        lines.append(line)
    return lines


def steps_printed(lines: list[str]) -> int:
    return max(int(line.split()[1]) for line in lines if line.startswith("step"))


def assert_complete(wav, at_least: int, at_most: int) -> None:
    rate, data = scipy.io.wavfile.read(wav)
    assert rate == 44100 and data.dtype == np.float32
    steps = data.size / TWO_LAYER_STEP
    assert steps == int(steps) and at_least <= steps <= at_most, (steps, at_least, at_most)
    assert soundfile.info(str(wav)).frames == data.size == header_frames(wav)
    # RIFF+WAVE (12) + fmt (8 + 18) + fact (12) + data header (8) + samples: no junk after
    assert os.path.getsize(wav) == 58 + 4 * data.size


def test_exception_escaping_the_loop_keeps_every_step(tmp_path):
    wav = tmp_path / "raise.wav"
    proc = subprocess.run([sys.executable, str(CHILD), "raise", str(wav)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "boom at step 30" in proc.stderr
    assert_complete(wav, 30, 30)


# Python ends an uncaught KeyboardInterrupt by re-raising SIGINT (status -2); SIGTERM -> 143
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 143)])
def test_interrupt_and_terminate_keep_every_step_up_to_the_signal(tmp_path, sig, code):
    wav = tmp_path / f"sig{int(sig)}.wav"
    proc = spawn("sleep", wav)
    lines = wait_for_steps(proc, 40)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    lines += out.splitlines()
    assert proc.returncode == code, err
    done = steps_printed(lines)
    assert_complete(wav, done, done + 1)  # the signal may land between the hook and the print


def test_sigkill_leaves_a_readable_file_missing_at_most_about_a_second(tmp_path):
    wav = tmp_path / "killed.wav"
    proc = spawn("sleep", wav)
    wait_for_steps(proc, 1)  # torch imported, training under way
    times = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        line = proc.stdout.readline()
        times.append((time.monotonic(), int(line.split()[1])))
    proc.kill()
    proc.wait(timeout=30)
    t_kill = time.monotonic()
    promised = header_frames(wav)
    data, rate = soundfile.read(str(wav), dtype="float32")  # readable after kill -9
    assert data.size == promised and promised % TWO_LAYER_STEP == 0
    assert np.all(np.isfinite(data)) and np.abs(data).max() > 0.05
    # everything the child had done 1.5 s before the kill (1 s flush + 0.1 s batching + slack)
    # is in the header-covered data
    done_before = max((s for t, s in times if t <= t_kill - 1.5), default=0)
    assert done_before > 50 and promised >= done_before * TWO_LAYER_STEP


@pytest.mark.parametrize("mode", ["run", "flush"])
def test_a_file_that_stops_growing_is_reported_once_and_training_goes_on(tmp_path, mode):
    """A real write failure from the kernel: the child may not grow a file past 200 kB.

    ``run``: the failure lands wherever the worker's batching puts it - mid-run (a warning on the
    training thread) or in the final drain at interpreter exit (on stderr); either way exactly one
    report naming the file. ``flush``: son.flush() after every step, so it lands mid-run."""
    script = tmp_path / "limited.py"
    script.write_text(
        "import resource, signal, sys, runpy\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        f"sys.argv = ['child', {mode!r}, 'limited.wav', '300']\n"
        f"runpy.run_path({str(CHILD)!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert steps_printed(proc.stdout.splitlines()) == 300  # training ran to the end
    assert proc.stderr.count("GradsonicWarning") == 1 and "File too large" in proc.stderr
    assert "WavSink('limited.wav')" in proc.stderr  # the file is named, not an object address
    data, _ = soundfile.read(str(tmp_path / "limited.wav"), dtype="float32")
    assert 0 < data.size <= 200_000 // 4 and np.all(np.isfinite(data))


class _FailsOnClose(Sink):
    def __init__(self, path):
        self.path = path
        self.closed = False

    def write(self, frames):
        pass

    def _close(self):
        raise OSError(28, "No space left on device")


def test_an_error_while_closing_at_garbage_collection_is_printed_once_on_stderr(capfd):
    model = TinyMLP()
    son = GradientSonifier(model, wav=None, sinks=[_FailsOnClose("gc.out")])
    train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), steps=2)
    worker = son._worker
    del son
    gc.collect()  # never closed: finalised here, with no training thread to warn
    worker.join(timeout=10)
    err = capfd.readouterr().err
    assert err.count("GradsonicWarning") == 1
    assert "closing sink _FailsOnClose('gc.out') failed" in err and "No space left" in err


def test_an_error_while_finishing_files_at_interpreter_exit_is_printed_once(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text("""
import torch
from gradsonic import GradientSonifier, Sink
class FailsOnClose(Sink):
    path = "exit.out"
    closed = False
    def write(self, frames):
        pass
    def _close(self):
        raise OSError(28, "No space left on device")
model = torch.nn.Linear(4, 2)
son = GradientSonifier(model, wav="exit.wav", sinks=[FailsOnClose()])
opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
""")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("GradsonicWarning") == 1, proc.stderr
    assert "closing sink FailsOnClose('exit.out') failed" in proc.stderr
    assert soundfile.info(str(tmp_path / "exit.wav")).frames == 3 * 3 * 441  # the WAV is whole


def test_full_disk_at_construction_is_a_clear_error():
    with pytest.raises(ValueError, match=r"wav='/dev/full' cannot be written: .*No space left"):
        GradientSonifier(TinyMLP(), wav="/dev/full")


@pytest.mark.parametrize("path, match", [
    ("/proc/version", r"wav='/proc/version' cannot be (opened for writing|written)"),
    ("{tmp}/a_file/run.wav", r"is not a directory"),
])
def test_unusable_path_is_a_clear_error_at_construction(tmp_path, path, match):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=match):
        GradientSonifier(TinyMLP(), wav=path.format(tmp=tmp_path))


class ExplodingSink(Sink):
    def __init__(self, after: int = 0) -> None:
        self.closed = False
        self.writes = 0
        self.after = after

    def write(self, frames):
        self.writes += 1
        if self.writes > self.after:
            raise OSError("device unplugged")


def test_a_failing_sink_is_reported_once_and_the_others_get_every_step():
    model = TinyMLP()
    bad, mem = ExplodingSink(), MemorySink()
    with pytest.warns(GradsonicWarning, match=r"sink .*ExplodingSink.* failed: OSError\('device unplugged'\)"):
        with GradientSonifier(model, wav="ok.wav", sinks=[bad, mem]) as son:
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
            train_steps(model, opt, steps=10)
            son.flush()
            train_steps(model, opt, steps=10)
    assert bad.closed and bad.writes == 1
    assert soundfile.info("ok.wav").frames == 20 * (3 * 441 + 2 * 441) == mem.frames.size


def test_a_synthesis_bug_is_reported_once_and_training_continues(monkeypatch):
    def broken(self, freqs, kinds, *more):
        raise ZeroDivisionError("synth bug")

    monkeypatch.setattr(Synth, "render", broken)
    model = TinyMLP()
    records = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GradientSonifier(model, wav="bug.wav", on_step=records.append) as son:
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
            train_steps(model, opt, steps=10)
            son.flush()
            train_steps(model, opt, steps=10)
    ours = [w for w in caught if issubclass(w.category, GradsonicWarning)]
    assert len(ours) == 1 and "synth bug" in str(ours[0].message)
    assert len(records) == 20  # on_step keeps working without audio
    assert scipy.io.wavfile.read("bug.wav")[1].size == 0  # still a valid (empty) WAV


def test_a_dead_worker_never_hangs_training(monkeypatch):
    def die(self):
        return  # the thread ends at once, never reading its queue

    monkeypatch.setattr(pipeline_module.Worker, "run", die)
    model = TinyMLP()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        son = GradientSonifier(model, wav="dead.wav", max_pending=2)
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
        train_steps(model, opt, steps=20)  # would block forever on the full queue
        son.close()
        son.sinks[0].close()  # nobody else will: the worker that owns it never ran
    ours = [w for w in caught if issubclass(w.category, GradsonicWarning)]
    assert len(ours) == 1 and "worker thread ended unexpectedly" in str(ours[0].message)
    assert son.steps == 20


def test_a_failing_on_step_callback_is_disabled_after_one_report():
    calls = []

    def callback(record):
        calls.append(record.step)
        raise KeyError("oops")

    model = TinyMLP()
    with pytest.warns(GradsonicWarning, match=r"on_step callback \(now disabled\) failed: KeyError"):
        with GradientSonifier(model, wav="cb.wav", on_step=callback) as son:
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
            train_steps(model, opt, steps=6)
    assert calls == [0]
    assert soundfile.info("cb.wav").frames == 6 * (3 * 441 + 2 * 441)


def test_a_worker_error_reported_at_a_step_points_at_the_users_step_line():
    model = TinyMLP()
    son = GradientSonifier(model, wav=None, on_step=lambda record: {}["missing"])
    opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
    x, y = batch(model)
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()
    deadline = time.monotonic() + 30
    while not son._worker.errors and time.monotonic() < deadline:  # the worker reads step 0
        time.sleep(0.01)
    assert son._worker.errors, "the on_step error never reached the worker's list"
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    with pytest.warns(GradsonicWarning, match="on_step callback") as caught:
        opt.step()  # <- reported here, on the training thread, from inside torch's step()
    son.close()
    # the user's line - not gradsonic's hook, nor torch's optimizer wrapper that called it
    lines = open(__file__).read().splitlines()
    assert caught[0].filename == __file__
    assert "opt.step()  # <- reported here" in lines[caught[0].lineno - 1]


# -- training loops as people write them ---------------------------------------------------


def test_amp_grad_scaler_gives_unscaled_norms_and_skipped_steps_sound_as_alarms():
    torch.manual_seed(0)
    model = TinyMLP()
    reference = TinyMLP()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    records, mem = [], MemorySink()
    with GradientSonifier(model, wav=None, sinks=[mem], on_step=records.append) as son:
        opt = son.wrap(opt, scaler=scaler)
        for i in range(3):
            x, y = batch(model, seed=i)
            opt.zero_grad()
            scaler.scale(((model(x) - y) ** 2).mean()).backward()
            if i == 1:
                model.fc2.weight.grad[0, 0] = float("inf")  # an fp16 overflow
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            if i == 1:  # the scaler skipped this update...
                assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        son.flush()
        assert son.steps == 3 and son.stats.alarm_steps == 1
    # ...and it was still heard: every layer of that step is the alarm
    assert [r.skipped for r in records] == [False, True, False]
    alarm = Synth()._alarm
    step1 = mem.frames.reshape(3, -1)[1]
    for layer in range(3):
        np.testing.assert_array_equal(step1[layer * 441:(layer + 1) * 441], alarm)
    # the first step's norms are the unscaled ones, as a run without the scaler measures them
    x, y = batch(reference, seed=0)
    ((reference(x) - y) ** 2).mean().backward()
    direct = [m.weight.grad.norm().item() for m in (reference.fc1, reference.fc2, reference.head)]
    np.testing.assert_allclose(records[0].norms, direct, rtol=1e-4)
    son.detach()
    assert "step" not in vars(scaler)  # the scaler is back to its own method


def test_gradient_accumulation_gives_one_sound_per_optimizer_step():
    model = TinyMLP()
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
        direct = []
        for step in range(3):
            opt.zero_grad()
            for micro in range(4):
                x, y = batch(model, seed=10 * step + micro)
                (((model(x) - y) ** 2).mean() / 4).backward()
            direct.append([m.weight.grad.norm().item() for m in (model.fc1, model.fc2, model.head)])
            opt.step()
        son.flush()
    assert [r.step for r in records] == [0, 1, 2]
    np.testing.assert_allclose(np.stack([r.norms for r in records]), direct, rtol=1e-5)


def test_zeroing_to_zeros_instead_of_none_sounds_as_the_lowest_pitch_not_silence():
    model = TwoHeads()
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        train_heads(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)),
                    ["right", "left"], set_to_none=False)
        son.flush()
    assert records[0].missing.tolist() == [False, True, False]  # never had a gradient yet
    assert records[1].missing.tolist() == [False, False, False]
    assert records[1].norms[2] == 0.0  # zeroed in place: a real zero norm


def test_param_groups_two_sonifiers_and_an_optimizer_made_before_the_sonifier():
    model = TinyMLP()
    opt = torch.optim.SGD([{"params": model.fc1.parameters(), "lr": 0.1},
                           {"params": [*model.fc2.parameters(), *model.head.parameters()]}],
                          lr=0.01)
    a, b = [], []
    with GradientSonifier(model, wav="a.wav", on_step=a.append) as son_a, \
            GradientSonifier(model, layers=["head"], wav="b.wav", on_step=b.append) as son_b:
        son_b.wrap(son_a.wrap(opt))
        direct = train_steps(model, opt, steps=4)
        son_a.flush()
        son_b.flush()
    np.testing.assert_allclose(np.stack([r.norms for r in a]), direct, rtol=1e-5)
    np.testing.assert_allclose(np.stack([r.norms for r in b])[:, 0], np.array(direct)[:, 2],
                               rtol=1e-5)


def test_torch_compiled_model_has_the_plain_layer_names_and_norms():
    torch.manual_seed(0)
    model = TinyMLP()
    compiled = torch.compile(model, backend="eager")
    records = []
    with GradientSonifier(compiled, layers=["fc*", "head"], wav=None, on_step=records.append) as son:
        assert son.layer_names == ("fc1", "fc2", "head")
        opt = son.wrap(torch.optim.SGD(compiled.parameters(), lr=0.01))
        for i in range(3):
            x, y = batch(model, seed=i)
            opt.zero_grad()
            ((compiled(x) - y) ** 2).mean().backward()
            direct = [m.weight.grad.norm().item() for m in (model.fc1, model.fc2, model.head)]
            opt.step()
        son.flush()
    np.testing.assert_allclose(records[-1].norms, direct, rtol=1e-5)


def test_complex_weights_are_rejected_at_attach_time():
    model = nn.Linear(3, 3, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"parameter 'weight' is complex \(torch.complex64\)"):
        GradientSonifier(model, wav=None)


def test_float16_gradients_beyond_the_float16_range_are_measured():
    model = nn.Linear(256, 256).half()
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        model.weight.grad = torch.full((256, 256), 60000.0, dtype=torch.float16)
        son.step()
        son.flush()
    assert records[0].norms[0] == pytest.approx(60000.0 * 256, rel=1e-3)  # not inf


# -- hygiene -------------------------------------------------------------------------------


def test_nothing_keeps_the_model_or_optimizer_alive():
    def run(close: bool):
        model = TinyMLP()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        son = GradientSonifier(model, wav="gc.wav")
        son.wrap(opt)
        train_steps(model, opt, steps=3)
        if close:
            son.close()
        return weakref.ref(model), weakref.ref(opt), weakref.ref(son), son._worker

    for close in (True, False):
        refs = run(close)
        gc.collect()
        assert [r() for r in refs[:3]] == [None, None, None], close
        refs[3].join(timeout=10)  # an unclosed sonifier is finalised when collected
        assert not refs[3].is_alive()
        assert soundfile.info("gc.wav").frames == 3 * (3 * 441 + 2 * 441)


def test_a_run_longer_than_one_wav_goes_on_in_numbered_files(monkeypatch):
    from gradsonic.sinks.wav import WavSink

    step = 3 * 441 + 2 * 441
    monkeypatch.setattr(WavSink, "max_data_bytes", 4 * step * 7)  # 7 steps per file, not 4 GiB
    model = TinyMLP()
    mem = MemorySink()
    with GradientSonifier(model, wav="long.wav", sinks=[mem]) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
        for _ in range(10):
            train_steps(model, opt, steps=2)
            son.flush()  # one block per 2 steps
    paths = son.sinks[0].paths
    assert [p.name for p in paths] == ["long.wav", "long-002.wav", "long-003.wav", "long-004.wav"]
    parts = [scipy.io.wavfile.read(p)[1] for p in paths]
    assert [part.size / step for part in parts] == [6, 6, 6, 2]  # whole 2-step blocks per file
    np.testing.assert_array_equal(np.concatenate(parts), mem.frames)  # nothing lost or doubled

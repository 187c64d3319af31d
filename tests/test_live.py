"""Live audio: real PyAudio/PortAudio/ALSA playback captured bit-exactly, and the policies."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

import gradsonic.sinks.live as live_module
from gradsonic import GradientSonifier, GradsonicWarning, MemorySink, SinkPaused
from gradsonic.demo import SeedCNN
from gradsonic.sinks import LiveSink, StepBlock

from .conftest import CAPTURE
from .fixtures.audio import ClockedStream, ManualStream, factory
from .fixtures.models import TinyMLP, train_steps

TONE = 441


def captured() -> np.ndarray:
    return np.fromfile(CAPTURE, dtype="<f4")


def match_played(played: np.ndarray, frames: np.ndarray, step_len: int) -> tuple[int, int, int]:
    """Check ``played`` is the intended steps in order, each whole, cut at a tone boundary, or
    skipped; gaps of silence (underruns) allowed. Returns (whole, truncated, skipped) counts."""
    got = played[played != 0]  # silence between steps and underrun gaps carry no information
    steps = frames.reshape(-1, step_len)
    p = whole = truncated = skipped = 0
    for step in steps:
        full = step[step != 0]
        if np.array_equal(got[p:p + full.size], full):
            p += full.size
            whole += 1
            continue
        for cut in range(step_len - TONE, 0, -TONE):  # longest tone-boundary prefix first
            part = step[:cut][step[:cut] != 0]
            if part.size and np.array_equal(got[p:p + part.size], part):
                p += part.size
                truncated += 1
                break
        else:
            skipped += 1
    assert p == got.size, f"played audio has {got.size - p} samples that match no intended step"
    return whole, truncated, skipped


# -- real playback through PyAudio -> PortAudio -> ALSA (file capture) -----------------------


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_real_playback_of_a_tiny_model_is_bit_exact(policy):
    model = TinyMLP()
    mem = MemorySink()
    sink = LiveSink(policy=policy)
    with GradientSonifier(model, wav="live.wav", live=sink, sinks=[mem]) as son:
        assert sink.available and son.sinks[1] is sink
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=12)
    whole, truncated, skipped = match_played(captured(), mem.frames, 5 * TONE)
    assert whole + truncated + skipped == 12 and whole >= 1
    assert (whole + truncated, skipped, truncated) == (
        sink.stats.played_steps, sink.stats.dropped_steps, sink.stats.truncated_steps)
    if policy == "block":
        assert whole == 12  # every step, in full
    assert soundfile.info("live.wav").frames == 12 * 5 * TONE  # the WAV gets every step anyway


def test_real_playback_of_the_seed_cnn_is_bit_exact(mnist_slice):
    x, y = mnist_slice
    torch.manual_seed(1)
    model = SeedCNN()
    mem = MemorySink()
    with GradientSonifier(model, layers=model.ordered_layers(), wav=None, mapping="seed",
                          live=LiveSink(policy="block"), sinks=[mem]) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5))
        for i in range(6):
            opt.zero_grad()
            F.nll_loss(model(x[i * 10:(i + 1) * 10]), y[i * 10:(i + 1) * 10]).backward()
            opt.step()
    assert match_played(captured(), mem.frames, 6 * TONE) == (6, 0, 0)


def test_demo_live_plays_what_it_writes(tmp_path):
    from gradsonic.cli import main

    assert main(["demo", "--preset", "sgd-lr0.01", "--steps", "5", "--live", "-q",
                 "--out", str(tmp_path)]) == 0
    wav, _ = soundfile.read(str(tmp_path / "sgd-lr0.01.wav"), dtype="float32")
    assert match_played(captured(), wav, 6 * TONE) == (5, 0, 0)


# -- without PyAudio or without a device: one warning, the rest goes on --------------------


def test_without_pyaudio_one_warning_names_the_install_line_and_the_wav_continues(monkeypatch):
    def missing():
        raise ModuleNotFoundError(f"live audio needs PyAudio (No module named 'pyaudio'); "
                                  f"{live_module.INSTALL_HINT}")

    monkeypatch.setattr(live_module, "_import_pyaudio", missing)
    model = TinyMLP()
    with pytest.warns(GradsonicWarning) as caught:
        with GradientSonifier(model, wav="no_pyaudio.wav", live=True) as son:
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
            train_steps(model, opt, steps=5)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "pip install 'gradsonic[live]'" in message and "portaudio19-dev" in message
    assert caught[0].filename == __file__  # points at the user's line
    assert len(son.sinks) == 1
    assert soundfile.info("no_pyaudio.wav").frames == 5 * 5 * TONE


def test_a_device_index_that_is_no_output_device_is_named_with_the_ones_there_are():
    model = TinyMLP()
    with pytest.warns(GradsonicWarning) as caught:
        with GradientSonifier(model, wav="bad_device.wav", live=LiveSink(device=9999)) as son:
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
            train_steps(model, opt, steps=3)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "device=9999 is not an output device" in message
    assert "0 ('default')" in message  # the test's ALSA device, as PortAudio lists it
    assert "pip install" not in message  # nothing to install: the index is wrong
    assert soundfile.info("bad_device.wav").frames == 3 * 5 * TONE


def test_headless_machine_warns_once_silences_alsa_and_keeps_the_wav(tmp_path):
    script = (
        "import torch\n"
        "from gradsonic import GradientSonifier\n"
        "m = torch.nn.Linear(4, 4)\n"
        "son = GradientSonifier(m, wav='headless.wav', live=True)\n"
        "opt = son.wrap(torch.optim.SGD(m.parameters(), lr=0.1))\n"
        "for _ in range(3):\n"
        "    opt.zero_grad(); m(torch.randn(2, 4)).sum().backward(); opt.step()\n")
    # the system's own ALSA configuration on a machine with no sound card: no output device
    env = {k: v for k, v in __import__("os").environ.items() if k != "ALSA_CONFIG_PATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("GradsonicWarning") == 1
    assert "live audio is off" in proc.stderr and "output device" in proc.stderr
    assert "ALSA lib" not in proc.stderr and "jack" not in proc.stderr.lower()
    assert soundfile.info(str(tmp_path / "headless.wav")).frames == 3 * 3 * TONE


def test_ctrl_c_during_live_training_leaves_no_hung_audio_thread(tmp_path):
    script = (
        "import time, torch\n"
        "from gradsonic import GradientSonifier\n"
        "m = torch.nn.Linear(4, 4)\n"
        "son = GradientSonifier(m, wav='ctrlc.wav', live=True)\n"
        "opt = son.wrap(torch.optim.SGD(m.parameters(), lr=0.01))\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    opt.zero_grad(); m(torch.randn(2, 4)).sum().backward(); opt.step()\n"
        "    time.sleep(0.001)\n")
    # Its own (unclocked) device writing to /dev/null: a child that outlived the test wrote into
    # the session's capture as fast as it could, and later tests read that file whole (OOM).
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.!default {\n type file\n slave.pcm { type null }\n'
                    ' file "/dev/null"\n format "raw"\n}\n')
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "ALSA_CONFIG_PATH": str(conf)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(2)
        proc.communicate(timeout=30)  # a hung audio thread would hold the process past this
    finally:
        if proc.poll() is None:  # never leave it running, whatever failed
            proc.kill()
            proc.communicate()
    assert proc.returncode == -2
    assert soundfile.info(str(tmp_path / "ctrlc.wav")).frames > 0


# -- policies, against streams with a clock of their own ------------------------------------


_made: list[LiveSink] = []


@pytest.fixture(autouse=True)
def _close_made_sinks():
    yield
    while _made:
        _made.pop().close()


def make_sink(policy, stream_cls=ManualStream, latency=0.05, **attrs):
    make = factory(stream_cls, **attrs)
    sink = LiveSink(policy=policy, latency=latency, stream_factory=make)
    sink.open(44100)
    _made.append(sink)
    return sink, make.stream


def steps(n, step=5 * TONE, first=0):
    """n distinct synthetic steps: tone k of step s is a constant-free ramp, all non-zero."""
    frames = np.concatenate([np.full(step, (first + s + 1) / 1000, np.float32) for s in range(n)])
    norms = np.ones((n, 5), np.float32)  # not used by the live sink
    return frames, StepBlock(first, n, step, TONE, np.full(n, time.monotonic()), norms,
                             np.zeros((n, 5), bool), np.zeros(n, bool))


def test_drop_policy_starts_the_newest_step_within_the_latency_and_counts_the_rest():
    sink, stream = make_sink("drop")
    frames, block = steps(5)
    # five 50 ms steps at once into an empty buffer: the newest step must start within 50 ms,
    # so only the last two are kept (the 4th now, the 5th 50 ms later)
    sink.write_steps(frames, block)
    assert (sink.stats.dropped_steps, sink.stats.truncated_steps) == (3, 0)
    head = stream.pull(256)
    assert np.all(head == frames[3 * 5 * TONE])
    frames2, block2 = steps(1, first=5)
    sink.write_steps(frames2, block2)  # arrives 256 frames into the 4th step, 4410 waiting
    ahead = sink._write - sink._read - 5 * TONE  # audio queued before the new step
    assert 0 <= ahead <= TONE  # cut at the next tone boundary: <= 10 ms, within 50 ms
    assert (sink.stats.dropped_steps, sink.stats.truncated_steps) == (4, 1)
    played = np.concatenate([stream.pull(256) for _ in range(20)])
    assert np.array_equal(played[:ahead], frames[3 * 5 * TONE + 256:][:ahead])
    assert np.all(played[ahead:ahead + 5 * TONE] == frames2[0])
    sink.close()
    assert stream.closed


def test_sample_policy_plays_whole_steps_and_skips_what_arrives_while_busy():
    sink, stream = make_sink("sample")
    for s in range(4):  # four steps arrive one by one while nothing is played
        frames, block = steps(1, first=s)
        sink.write_steps(frames, block)
    # the first two start within 50 ms (at 0 and 50 ms); the others find more waiting: skipped
    assert (sink.stats.dropped_steps, sink.stats.truncated_steps) == (2, 0)
    played = np.concatenate([stream.pull(256) for _ in range(20)])
    assert np.all(played[:5 * TONE] == 1 / 1000) and np.all(played[5 * TONE:10 * TONE] == 2 / 1000)
    assert np.all(played[10 * TONE:] == 0)
    sink.close()


def test_block_policy_paces_training_to_the_audio_clock():
    model = TinyMLP()
    sink = LiveSink(policy="block", stream_factory=factory(ClockedStream))
    with GradientSonifier(model, wav=None, live=sink) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        t0 = time.monotonic()
        train_steps(model, opt, steps=20)  # 20 x 55 ms of sound
        elapsed = time.monotonic() - t0
    audio = 20 * 5 * TONE / 44100
    # Unpaced, 20 steps of this model take ~20 ms. Paced, training can only be ahead of the
    # clock by what the pipeline holds: the ring (latency + 1 step), the worker's batch (2 steps),
    # the queue (max_pending = 2) and the step being handed over: latency + 6 steps.
    assert elapsed >= audio - 0.05 - 6 * 5 * TONE / 44100
    assert sink.stats.played_steps == 20 and sink.stats.dropped_steps == 0


def test_drop_policy_never_holds_training_even_if_the_device_stalls_and_says_so_once():
    model = TinyMLP()
    sink = LiveSink(policy="drop", stream_factory=factory(ClockedStream, stalled=True))
    with pytest.warns(GradsonicWarning) as caught:
        with GradientSonifier(model, wav="stall.wav", live=sink) as son:
            sink._last_callback -= 10  # the device has taken nothing for 10 s already
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
            train_steps(model, opt, steps=300)
            son.flush()
            assert sink.stats.dropped_steps + sink.stats.truncated_steps > 250
            assert sink in son.sinks and sink.available  # kept: it plays if the device does
    assert len(caught) == 1
    assert "the audio device has taken no audio for" in str(caught[0].message)
    assert "is paused, not stopped" in str(caught[0].message)
    assert "Traceback" not in str(caught[0].message)  # a notice, not a fault
    assert soundfile.info("stall.wav").frames == 300 * 5 * TONE


def test_a_stall_is_told_once_per_stall_and_again_after_the_device_came_back():
    sink, stream = make_sink("drop")
    sink._last_callback -= 10
    with pytest.raises(SinkPaused, match="has taken no audio for 10"):
        sink.write_steps(*steps(1))
    sink.write_steps(*steps(1, first=1))  # the same stall: told already
    stream.pull(256)  # the device takes audio again
    sink.write_steps(*steps(1, first=2))
    sink._last_callback -= 10  # and stalls again
    with pytest.raises(SinkPaused):
        sink.write_steps(*steps(1, first=3))


def test_clocked_drop_latency_is_within_the_bound():
    model = TinyMLP()
    sink = LiveSink(policy="drop", stream_factory=factory(ClockedStream))
    with GradientSonifier(model, wav=None, live=sink) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        for _ in range(40):
            train_steps(model, opt, steps=1)
            time.sleep(0.01)
        son.flush()
    lat = np.array(sink.stats.latencies)
    assert lat.size >= 5
    # worker hand-over (<= 20 ms) + next tone boundary (<= 10 ms) + one callback period (512
    # frames: 11.6 ms) = 42 ms by design; the median must be inside the 50 ms default anywhere
    assert np.median(lat) <= 0.05


def test_an_error_in_the_callback_stops_the_stream_and_is_reported_on_the_training_thread(
        monkeypatch):
    model = TinyMLP()
    make = factory(ManualStream)
    sink = LiveSink(stream_factory=make)
    son = GradientSonifier(model, wav=None, live=sink)
    try:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=2)
        son.flush()
        monkeypatch.setattr(sink, "_take", lambda *a: 1 / 0)
        data, flag = sink._callback(None, 256, {}, 0)  # what PortAudio would call
        assert flag == 2 and data == bytes(1024)  # paAbort with silence, no exception
        with pytest.warns(GradsonicWarning, match=r"live audio stopped: ZeroDivisionError"):
            train_steps(model, opt, steps=1)
            son.flush()
        assert sink.closed and son.steps == 3
    finally:
        son.close()


class _BlockingStream:
    """A PyAudio blocking output stream that takes ``fail_after`` writes, then the device is gone
    (each write waits for the device as a real one does, here on an event the test sets)."""

    def __init__(self, fail_after: int):
        self.writes: list[tuple[bytes, int]] = []
        self.fail_after = fail_after
        self.room = threading.Event()
        self.stopped = self.closed = False

    def start_stream(self):
        pass

    def write(self, data, frames, exception_on_underflow=False):
        assert exception_on_underflow is False  # an underrun is a gap, never an error
        self.room.wait(10)
        if len(self.writes) == self.fail_after:
            raise OSError(-9999, "Unanticipated host error")
        self.writes.append((data, frames))

    def stop_stream(self):
        self.stopped = True

    def close(self):
        self.closed = True


class _PortAudio:
    terminated = False

    def terminate(self):
        self.terminated = True


def test_the_pump_writes_what_the_callback_gives_and_a_failed_write_is_reported():
    model = TinyMLP()
    device, pa = _BlockingStream(fail_after=40), _PortAudio()
    sink = LiveSink(stream_factory=lambda rate, fpb, callback, dev: live_module.Pump(
        device, callback, fpb, pa))
    son = GradientSonifier(model, wav=None, live=sink, sinks=[mem := MemorySink()])
    try:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=2)
        son.flush()
        pump = sink._stream
        assert pump._thread.name == "gradsonic-audio" and pump.is_active()
        device.room.set()  # the device takes buffers: 40 writes, then the 41st fails
        pump._thread.join(10)
        assert not pump.is_active() and isinstance(pump.error, OSError)
        assert [n for _, n in device.writes] == [512] * 40
        played = np.frombuffer(b"".join(d for d, _ in device.writes), dtype=np.float32)
        match_played(played, mem.frames, 5 * TONE)  # the two steps, in order, as the callback
        assert played[played != 0].size == mem.frames[mem.frames != 0].size  # ... gave them
        with pytest.warns(GradsonicWarning, match=r"live audio stopped: OSError"):
            train_steps(model, opt, steps=1)
            son.flush()
        assert sink.closed and son.steps == 3
        assert device.stopped and device.closed and pa.terminated  # released
    finally:
        son.close()


def test_a_pump_stuck_in_a_write_is_left_alone_and_released_when_the_device_returns():
    model = TinyMLP()
    device, pa = _BlockingStream(fail_after=10), _PortAudio()  # never given room
    pumps = []
    sink = LiveSink(stream_factory=lambda rate, fpb, callback, dev: pumps.append(
        live_module.Pump(device, callback, fpb, pa)) or pumps[-1])
    with GradientSonifier(model, wav="run.wav", live=sink) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=3)
    assert son.steps == 3 and soundfile.info("run.wav").frames == 3 * 5 * TONE
    assert not device.closed and not pa.terminated  # not pulled from under the stuck write
    device.room.set()  # the device comes back: the write returns, the thread ends ...
    pumps[0]._thread.join(10)
    assert not pumps[0].is_active()
    assert device.stopped and device.closed and pa.terminated  # ... and releases it all


def test_block_policy_stops_waiting_when_a_write_fails(monkeypatch):
    model = TinyMLP()
    device, pa = _BlockingStream(fail_after=0), _PortAudio()  # its first write will fail
    sink = LiveSink(policy="block", stream_factory=lambda rate, fpb, callback, dev:
                    live_module.Pump(device, callback, fpb, pa))
    waiting, wait_for_room = threading.Event(), sink._wait_for_room

    def wait(*args):
        if sink._write - sink._read > sink._latency_frames:  # the worker waits for the device
            waiting.set()
        return wait_for_room(*args)

    monkeypatch.setattr(sink, "_wait_for_room", wait)
    # the device fails while the worker waits for it to drain the ring
    threading.Thread(target=lambda: waiting.wait(30) and device.room.set(), daemon=True).start()
    with GradientSonifier(model, wav="run.wav", live=sink) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        # the real cause, not "the audio device stopped consuming for 2.0 s"
        with pytest.warns(GradsonicWarning, match=r"live audio stopped: OSError") as caught:
            train_steps(model, opt, steps=6)
            son.flush()
    assert not any("stopped consuming" in str(w.message) for w in caught)
    assert son.steps == 6 and soundfile.info("run.wav").frames == 6 * 5 * TONE


def test_a_live_sink_plays_for_one_sonifier():
    model = TinyMLP()
    make = factory(ManualStream)
    sink = LiveSink(stream_factory=make)
    with GradientSonifier(model, wav=None, live=sink):
        opened = make.stream
        with pytest.raises(ValueError, match=r"LiveSink\(\) already played for a sonifier.*"
                                             r"pass a new LiveSink\(\) to each sonifier"):
            GradientSonifier(model, wav=None, live=sink)  # shared while open
    with pytest.raises(ValueError, match=r"already played for a sonifier"):
        GradientSonifier(model, wav=None, live=sink)  # reused after close
    assert make.stream is opened and opened.closed  # no second device was opened


def test_live_sink_bad_arguments():
    with pytest.raises(ValueError, match=r"live policy must be one of \['block', 'drop', 'sample'\]"):
        LiveSink(policy="loud")
    with pytest.raises(ValueError, match=r"latency \(seconds\) must be in \(0, 10\], not 0"):
        LiveSink(latency=0)
    with pytest.raises(ValueError, match=r"frames_per_buffer must be an integer in \[16, 65536\]"):
        LiveSink(frames_per_buffer=3)
    with pytest.raises(TypeError, match=r"live must be True, False or a LiveSink, not 'yes'"):
        GradientSonifier(TinyMLP(), wav=None, live="yes")


class _Counting(MemorySink):
    """Frames in memory, and the steps of every write as handed over."""

    def __init__(self, max_delay):
        super().__init__()
        self.max_delay = max_delay
        self.writes: list[list[int]] = []

    def write_steps(self, frames, block):
        self.writes.append(block.step_numbers.tolist())
        super().write_steps(frames, block)


def test_files_beside_live_audio_get_merged_blocks_at_their_own_pace():
    """With live audio the worker wakes every 20 ms; a file-like sink (max_delay 0.5 s) is handed
    the same steps and frames in a few merged writes, in order, nothing lost."""
    fast, slow = _Counting(0.02), _Counting(0.5)
    model = TinyMLP()
    son = GradientSonifier(model, wav=None, sinks=[fast, slow])
    opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    t0 = time.monotonic()
    for _ in range(40):
        train_steps(model, opt, 5)
        time.sleep(0.01)  # steps arrive over time, as in training
    son.close()
    elapsed = time.monotonic() - t0
    assert son._worker.interval == 0.02
    flat = [s for w in slow.writes for s in w]
    assert flat == list(range(200)) == [s for w in fast.writes for s in w]
    np.testing.assert_array_equal(slow.frames, fast.frames)
    assert len(slow.writes) <= elapsed / 0.5 + 2, (len(slow.writes), elapsed)


class _Signalling(_Counting):
    def __init__(self, max_delay):
        super().__init__(max_delay)
        self.arrived = threading.Event()

    def write_steps(self, frames, block):
        super().write_steps(frames, block)
        self.arrived.set()


def test_a_step_further_from_the_last_than_the_wait_is_rendered_at_once():
    """The worker lets steps pile up for its sinks' max_delay (here 60 s) - unless the step came
    longer than that after the previous one: waiting would batch nothing, so it is rendered at
    once (beside live audio: one wake-up per 50 ms step instead of two, 20 ms sooner)."""
    sink = _Signalling(60.0)
    model = TinyMLP()
    son = GradientSonifier(model, wav=None, sinks=[sink])
    try:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, 1)  # the first step: nothing before it
        assert sink.arrived.wait(30), "the first step waited for the batch"
        sink.arrived.clear()
        train_steps(model, opt, 2)  # steps close together: they wait for the batch
        assert not sink.arrived.wait(0.5)
        son.flush()
        assert sink.writes == [[0], [1, 2]]
    finally:
        son.close()

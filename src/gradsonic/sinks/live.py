"""Live playback through PyAudio (``pip install 'gradsonic[live]'``).

A ``gradsonic-audio`` thread pulls one buffer at a time from the sink's callback and hands it to
PortAudio in a blocking write (which waits for the device without the interpreter lock). The
callback only copies ready float32 frames out of a ring buffer (no torch, no allocation beyond
the bytes PyAudio needs, never raises: an error aborts the stream and is reported on the training
thread at its next step). The audio threads cost a quarter less CPU this way than with
PortAudio's own callback thread (``benchmarks/live_callback.py``). The sonifier's worker
fills the ring with whole steps, under one of three policies for when training produces sound
faster than it can be played (the seed layout makes 60 ms of sound per step; at 100 steps/s that
is 6 s of sound per second):

``"drop"`` (default)
    Keep playing the most recent steps. A new step starts within ``latency`` (50 ms) of reaching
    the sink: steps still waiting are dropped and the step playing is cut at its next tone
    boundary (tones begin and end at zero, so the cut is click-free). Counted in
    ``stats.dropped_steps`` / ``stats.truncated_steps``. The worker never waits.
``"sample"``
    Play whole steps only: a step that arrives while the buffer already holds ``latency`` of
    audio is skipped (counted), one that arrives when there is room plays in full. You hear an
    even sample of the run at the natural pace of the tones.
``"block"``
    Pace training to the audio (demos, teaching): every step is played in full, and ``step()``
    waits while the buffer is full. If the device stops consuming for 2 s the sink gives up
    (reported once) and training goes on.

``close()`` plays out what is already buffered (at most ``latency`` plus one step), then stops and
releases the device. A missing PyAudio/PortAudio or a machine without an output device is one
warning naming the fix; the sonifier then goes on without live audio.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .._options import StrEnum, check_number
from ..errors import ConfigError, GradsonicWarning, SinkError, SinkPaused, user_stacklevel
from .base import Sink, StepBlock

INSTALL_HINT = ("install PortAudio and PyAudio: `apt-get install portaudio19-dev` (Debian/Ubuntu) "
                "or `brew install portaudio` (macOS), then `pip install 'gradsonic[live]'`")
STALL_SECONDS = 2.0  # a device that takes nothing this long is reported (policy block: stopped)


class LivePolicy(StrEnum):
    DROP = "drop"
    SAMPLE = "sample"
    BLOCK = "block"


def _import_pyaudio() -> Any:
    """PyAudio, or raise ModuleNotFoundError naming the install line (tests monkeypatch this)."""
    try:
        import pyaudio
    except ImportError as e:
        raise ModuleNotFoundError(f"live audio needs PyAudio ({e}); {INSTALL_HINT}") from e
    return pyaudio


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the ALSA/JACK lines PortAudio prints on file descriptor 2 while it starts."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


StreamFactory = Callable[[int, int, Callable[..., Any], Any], Any]


def pyaudio_stream(sample_rate: int, frames_per_buffer: int, callback: Callable[..., Any],
                   device: Any, channels: int = 1) -> Any:
    """Open a PyAudio float32 output stream fed from ``callback`` (PortAudio's callback
    signature) by a :class:`Pump`; raise OSError if none."""
    pyaudio = _import_pyaudio()
    with _quiet_stderr():
        pa = pyaudio.PyAudio()
    try:
        if device is None and pa.get_device_count() == 0:
            raise OSError("no audio output device (this looks like a headless machine)")
        if device is not None:
            _check_device(pa, device, channels)
        stream = pa.open(format=pyaudio.paFloat32, channels=channels, rate=sample_rate,
                         output=True, frames_per_buffer=frames_per_buffer,
                         output_device_index=device, start=False)
    except BaseException:
        pa.terminate()
        raise
    return Pump(stream, callback, frames_per_buffer, pa)


class NoSuchDevice(OSError):
    """``LiveSink(device=...)`` names no output device of this machine (nothing to install)."""


def _check_device(pa: Any, device: int, channels: int) -> None:
    outputs: dict[int, str] = {}  # index -> name of each device that can play `channels`
    for i in range(pa.get_device_count()):
        with contextlib.suppress(Exception):
            info = pa.get_device_info_by_index(i)
            if int(info.get("maxOutputChannels", 0)) >= channels:
                outputs[i] = str(info.get("name", "?"))
    if device not in outputs:
        listed = ", ".join(f"{i} ({name!r})" for i, name in outputs.items()) or "none"
        raise NoSuchDevice(
            f"device={device} is not an output device with {channels} channel(s) here; "
            f"the output devices are: {listed} (or device=None for the system default)")


class Pump:
    """Plays a blocking PyAudio stream from a callback, on a thread of its own.

    PortAudio's callback mode runs its own thread that wakes per buffer, asks for timing
    information and takes the interpreter lock for the Python callback; here one Python thread
    calls the callback for ``frames`` frames and writes them (the write waits for room in the
    device's buffer with the lock released). The callback's ``(bytes, flag)`` contract is
    PortAudio's: a non-zero flag ends the stream. A write that fails (the device vanished) is
    kept in ``error`` and ends the stream."""

    def __init__(self, stream: Any, callback: Callable[..., Any], frames: int, pa: Any) -> None:
        self.stream, self.callback, self.frames, self._pa = stream, callback, frames, pa
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ended = False  # the thread has left its loop
        self._release_at_end = False  # close() came while a write was stuck

    def start_stream(self) -> None:
        self.stream.start_stream()
        self._thread = threading.Thread(target=self._run, name="gradsonic-audio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data, flag = self.callback(None, self.frames, None, 0)
                self.stream.write(data, self.frames, exception_on_underflow=False)
                if flag:
                    return
        except BaseException as e:  # (a thread's exception would only reach stderr)
            self.error = e
        finally:
            with self._lock:
                self._ended = True
                release = self._release_at_end
            if release:  # the device came back after close() gave up on it
                self._release(stop=True)

    def is_active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop_stream(self) -> None:
        """Stop pulling; the write under way finishes (one buffer), then the stream stops. A
        device that never takes that buffer is left to the daemon thread: training goes on."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            if self._thread.is_alive():
                raise SinkError("the audio device stopped taking audio")
        self.stream.stop_stream()

    def close(self) -> None:
        """Release the stream and PortAudio; while a write is stuck in them, when it returns."""
        self._stop.set()
        with self._lock:
            if self._thread is not None and not self._ended:
                self._release_at_end = True
                return
        self._release(stop=False)

    def _release(self, stop: bool) -> None:
        try:
            if stop:
                with contextlib.suppress(Exception):
                    self.stream.stop_stream()
            self.stream.close()
        finally:
            self._pa.terminate()


@dataclass
class LiveStats:
    played_steps: int = 0  # steps whose first frame reached the device
    dropped_steps: int = 0  # steps never played (policy drop/sample)
    truncated_steps: int = 0  # steps cut at a tone boundary (policy drop)
    frames_played: int = 0
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    """Seconds from each played step's optimizer step to its first frame leaving the buffer."""


class LiveSink(Sink):
    """Plays the sonifier's audio on the speakers while training runs.

    ``frames_per_buffer`` (512: 11.6 ms at 44.1 kHz) is how much the audio thread takes from the
    ring at a time: 86 Python callbacks a second, each taking the interpreter lock from training
    for ~40 us. A step still leaves the ring within the 50 ms ``latency``: worker hand-over
    (<= 20 ms) + the next tone boundary (<= 10 ms) + one buffer (11.6 ms). The thread takes a
    buffer as soon as the device accepted the previous one, so a buffer then waits up to one
    buffer longer in the device than under PortAudio's callback (the price of the CPU the
    module docstring mentions). Smaller buffers shave both terms at the price of more callbacks.

    ``stream_factory(sample_rate, frames_per_buffer, callback, device)`` replaces the device
    (tests): it returns a started-on-demand stream (``start_stream``, ``stop_stream``,
    ``close``) that calls ``callback`` as PortAudio would."""

    max_delay = 0.02  # the worker hands steps over at least every 20 ms

    _stream: Any = None
    _used = False  # opened for a sonifier once (and for good)
    _stall_told = False  # the device's current stall is reported already

    def __init__(self, device: int | None = None, policy: str = "drop", latency: float = 0.05,
                 frames_per_buffer: int = 512, *, stream_factory: StreamFactory | None = None
                 ) -> None:
        self.policy = LivePolicy.parse(policy, "live policy")
        self.latency = check_number(latency, "latency (seconds)", high=10.0)
        if isinstance(frames_per_buffer, bool) or not isinstance(frames_per_buffer, int) \
                or not 16 <= frames_per_buffer <= 65536:
            raise ConfigError(f"frames_per_buffer must be an integer in [16, 65536], "
                              f"not {frames_per_buffer!r}")
        if device is not None and (isinstance(device, bool) or not isinstance(device, int)):
            raise ConfigError(f"device must be a PyAudio device index (int) or None, "
                              f"not {device!r}")
        self.device = device
        self.frames_per_buffer = frames_per_buffer
        self.max_pending = 2 if self.policy is LivePolicy.BLOCK else None
        self._factory = stream_factory or pyaudio_stream
        self.stats = LiveStats()
        self.available = False
        self.error: BaseException | None = None
        self.closed = False
        self._cond = threading.Condition(threading.Lock())
        self._ring = np.zeros(0, dtype=np.float32)
        self._read = 0  # absolute frame counters
        self._write = 0
        self._cuts: collections.deque[int] = collections.deque()  # tone boundaries, absolute
        # steps in the ring: [start, end, time of the optimizer step, started playing]
        self._steps: collections.deque[list[Any]] = collections.deque()
        self._out = np.zeros(0, dtype=np.float32)
        self._last_callback = time.monotonic()

    # -- set-up ------------------------------------------------------------------------

    def prepare(self, sample_rate: int) -> None:
        if self._used:
            raise ConfigError(f"{self!r} already played for a sonifier (a LiveSink opens its "
                              "device once and closes it with that sonifier); pass a new "
                              "LiveSink() to each sonifier")

    def open(self, sample_rate: int) -> None:
        """Open the device; on failure warn once and leave the sink closed (training goes on)."""
        self._used = True
        self.sample_rate = int(sample_rate)
        # The ring holds samples (stereo interleaved): every count below is frames x channels.
        self._latency_frames = max(1, round(self.latency * self.sample_rate)) * self.channels
        try:
            extra = {"channels": self.channels} if self.channels != 1 else {}
            self._stream = self._factory(self.sample_rate, self.frames_per_buffer,
                                         self._callback, self.device, **extra)
            self._stream.start_stream()
            self._last_callback = time.monotonic()
        except (OSError, ModuleNotFoundError, ImportError) as e:
            self._release()
            self.closed = True
            hint = "" if isinstance(e, (ModuleNotFoundError, NoSuchDevice)) else \
                f"; {INSTALL_HINT} and check that an output device exists"
            warnings.warn(f"gradsonic: live audio is off: {e}{hint}. Training and the other "
                          "outputs (WAV, ...) continue.", GradsonicWarning,
                          stacklevel=user_stacklevel())
            return
        self.available = True

    def _ensure_capacity(self, step_frames: int) -> None:
        need = self._latency_frames + 2 * step_frames + self.frames_per_buffer * self.channels
        if self._ring.size >= need:
            return
        waiting = self._take(self._read, self._write - self._read) if self._ring.size else None
        self._ring = np.zeros(max(need, 2 * self._ring.size), dtype=np.float32)
        if waiting is not None and waiting.size:
            self._put(self._read, waiting)

    # -- ring access (callers hold the lock) ---------------------------------------------

    def _take(self, start: int, n: int) -> np.ndarray:
        size = self._ring.size
        i = start % size
        if i + n <= size:
            return self._ring[i:i + n]
        return np.concatenate((self._ring[i:], self._ring[: n - (size - i)]))

    def _put(self, start: int, frames: np.ndarray) -> None:
        size = self._ring.size
        i = start % size
        first = min(frames.size, size - i)
        self._ring[i:i + first] = frames[:first]
        self._ring[: frames.size - first] = frames[first:]

    # -- the real-time side ------------------------------------------------------------

    def _callback(self, in_data: Any, frame_count: int, time_info: Any, status: Any) -> tuple:
        """PortAudio's callback: copy ready frames, never raise."""
        try:
            out = self._out
            samples = frame_count * self.channels
            if out.size != samples:
                out = self._out = np.zeros(samples, dtype=np.float32)
            with self._cond:
                self._last_callback = now = time.monotonic()
                n = max(0, min(self._write - self._read, samples))
                if n:
                    out[:n] = self._take(self._read, n)
                end = self._read + n
                for step in self._steps:  # mark the steps whose first frame goes out now
                    if step[0] >= end:
                        break
                    if not step[3]:
                        step[3] = True
                        self.stats.played_steps += 1
                        self.stats.latencies.append(now - step[2])
                while self._steps and self._steps[0][1] <= end:
                    self._steps.popleft()
                while self._cuts and self._cuts[0] < end:
                    self._cuts.popleft()
                self._read = end
                self.stats.frames_played += n // self.channels
                self._cond.notify_all()
            out[n:] = 0.0
            return out.tobytes(), 0  # paContinue
        except BaseException as e:  # never raise into PortAudio
            self.error = e
            return bytes(4 * frame_count * self.channels), 2  # paAbort

    # -- the worker side ---------------------------------------------------------------

    def write(self, frames: np.ndarray) -> None:
        raise SinkError("LiveSink takes whole steps from a GradientSonifier (write_steps)")

    def write_steps(self, frames: np.ndarray, block: StepBlock) -> None:
        self._raise_device_error()
        if not self.available or self.closed:
            return
        step = block.step_frames * self.channels
        frames = np.ascontiguousarray(frames).reshape(-1)  # stereo: interleaved samples
        with self._cond:
            self._ensure_capacity(step)
            first = 0
            if self.policy is LivePolicy.DROP:
                if self._write - self._read > self._latency_frames:
                    self._cut()
                # keep the newest steps whose start still falls within the latency
                room = (self._read + self._latency_frames - self._write) // step + 1
                first = block.count - max(1, min(block.count, room))
                self.stats.dropped_steps += first
            for k in range(first, block.count):
                if self.policy is LivePolicy.BLOCK:
                    self._wait_for_room()
                elif self.policy is LivePolicy.SAMPLE and \
                        self._write - self._read > self._latency_frames:
                    self.stats.dropped_steps += 1  # busy: skip this step, whole
                    continue
                self._append(frames[k * step:(k + 1) * step], float(block.times[k]),
                             block.tone_frames * self.channels)
        self._tell_stall()

    def _tell_stall(self) -> None:
        """Report once a device that has taken no audio for STALL_SECONDS (a sound server
        stopped, a Bluetooth speaker gone to sleep): steps are dropped meanwhile, and nobody
        would know why the speakers went quiet. Playback goes on if the device does."""
        idle = time.monotonic() - self._last_callback
        if idle <= STALL_SECONDS:
            self._stall_told = False
        elif not self._stall_told:
            self._stall_told = True
            raise SinkPaused(f"the audio device has taken no audio for {idle:.1f} s, so the "
                             "speakers are silent (the WAV and the recording keep every step)")

    def _append(self, frames: np.ndarray, t_step: float, tone: int) -> None:
        start = self._write
        self._put(start, frames)
        self._steps.append([start, start + frames.size, t_step, False])
        self._cuts.extend(range(start + tone, start + frames.size, tone))
        self._cuts.append(start + frames.size)
        self._write = start + frames.size

    def _cut(self) -> None:
        """Drop waiting audio from the first tone boundary the device has not reached yet."""
        cut = next((c for c in self._cuts if c >= self._read), self._write)
        while self._cuts and self._cuts[-1] > cut:
            self._cuts.pop()
        while self._steps and self._steps[-1][0] >= cut:
            self._steps.pop()
            self.stats.dropped_steps += 1
        if self._steps and self._steps[-1][1] > cut:
            self._steps[-1][1] = cut
            self.stats.truncated_steps += 1
        self._write = max(cut, self._read)

    def _raise_device_error(self) -> None:
        """Raise the callback's error, or the stream's (a Pump's failed write), as SinkError."""
        if self.error is None:
            self.error = getattr(self._stream, "error", None)
        if self.error is not None:
            raise SinkError(f"live audio stopped: {self.error!r}") from self.error

    def _wait_for_room(self) -> None:
        while self._write - self._read > self._latency_frames:
            self._raise_device_error()  # (a device gone is no reason to wait 2 s)
            if self.closed:
                return
            self._cond.wait(0.05)
            if time.monotonic() - self._last_callback > STALL_SECONDS:
                raise SinkError(f"the audio device stopped consuming for {STALL_SECONDS} s")

    # -- shutdown ----------------------------------------------------------------------

    def _close(self) -> None:
        """Play out what is buffered (bounded), then stop and release the device."""
        if self.available and self.error is None:
            deadline = time.monotonic() + (self._write - self._read) / (
                self.sample_rate * self.channels) + 0.5
            with self._cond:
                while self._write > self._read and time.monotonic() < deadline:
                    self._cond.wait(0.02)
        self.available = False
        self._release()

    def _release(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        pa = getattr(stream, "_gradsonic_pa", None)
        try:
            with contextlib.suppress(Exception):
                stream.stop_stream()
            stream.close()
        finally:
            if pa is not None:
                pa.terminate()


def play_frames(frames: np.ndarray, sample_rate: int, device: int | None = None) -> None:
    """Play float32 frames (``[n]`` mono or ``[n, 2]`` stereo) to the end through PyAudio
    (blocking); OSError if no device."""
    pyaudio = _import_pyaudio()
    with _quiet_stderr():
        pa = pyaudio.PyAudio()
    try:
        if device is None and pa.get_device_count() == 0:
            raise OSError(f"no audio output device (this looks like a headless machine); "
                          f"copy the file to a machine with speakers, or {INSTALL_HINT}")
        channels = 1 if np.ndim(frames) == 1 else int(np.shape(frames)[1])
        stream = pa.open(format=pyaudio.paFloat32, channels=channels, rate=int(sample_rate),
                         output=True, output_device_index=device)
        try:
            data = np.ascontiguousarray(frames, dtype=np.float32).reshape(-1)
            for lo in range(0, data.size, 4096 * channels):
                stream.write(data[lo:lo + 4096 * channels].tobytes())
            # 0.2 s of silence so the tail plays
            stream.write(bytes(4 * channels * (sample_rate // 5)))
        finally:
            stream.stop_stream()
            stream.close()
    finally:
        pa.terminate()

"""Streaming, crash-safe WAV writer (mono, float32 or 16-bit PCM).

Written by hand (RIFF is simple) rather than through libsndfile so that the file is exactly a
plain ``fmt ``/``fact``/``data`` WAV that every reader (scipy.io.wavfile included) opens without
warnings, and so that the header is rewritten on a schedule: once ``flush_interval`` seconds (0.5 s
by default) of wall time *or* of audio have passed since the last time, the header is updated and
the file flushed and ``fsync``-ed. A WAV holds at most 4 GiB (~6.7 h of float32 audio at 44.1 kHz):
a longer run goes on in ``run-002.wav``, ``run-003.wav``, ... (each a complete WAV of whole steps;
``sink.paths`` lists them). A SIGKILL or power loss therefore loses at most about half a
second of the latest audio, plus the steps the sonifier's worker had not yet received (it
collects steps for up to ``max_delay`` = 0.5 s): about a second in all. ``close()`` writes the
final header.

The file is opened without truncation and locked (:class:`gradsonic.files.ExclusiveFile`) in
:meth:`WavSink.prepare`; only :meth:`WavSink.open` truncates it - or, with ``resume=True``, cuts it
back to the whole steps the sonifier keeps and appends after them.

Samples are float32 as rendered; for ``"pcm16"`` they are clipped to [-1, 1] and stored as
``round(x * 32767)``.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._options import StrEnum, check_number
from ..errors import ConfigError, ConfigTypeError, SinkError
from ..files import ExclusiveFile, FileInUseError
from .base import Sink

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
_MAX_DATA_BYTES = 0xFFFFFFFF - 64  # RIFF sizes are 32-bit


class WavFormat(StrEnum):
    FLOAT32 = "float32"
    PCM16 = "pcm16"


def check_writable(path: str | os.PathLike[str], what: str = "wav") -> Path:
    """Return ``path`` as a Path after checking it can be created; raise a clear error if not."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigTypeError(f"{what} must be a path (str or os.PathLike) or None, "
                              f"not {type(path).__name__} ({path!r})")
    p = Path(path)
    if str(path) == "" or p.is_dir():
        raise ConfigError(f"{what} must name a file, not the directory {str(path)!r}")
    if not p.parent.exists():
        raise ConfigError(f"{what}={str(path)!r}: directory {str(p.parent)!r} does not exist")
    if not p.parent.is_dir():
        raise ConfigError(f"{what}={str(path)!r}: {str(p.parent)!r} is not a directory")
    return p


class WavSink(Sink):
    """Streams frames to a WAV file while training runs."""

    _file: BinaryIO | None = None
    #: A RIFF file holds at most 4 GiB; a longer run continues in run-002.wav, run-003.wav, ...
    max_data_bytes: int = _MAX_DATA_BYTES

    def __init__(self, path: str | os.PathLike[str], format: str = "float32",
                 flush_interval: float = 0.5, resume: bool = False) -> None:
        self.path = check_writable(path)
        self._base = self.path.absolute()  # run-002.wav goes beside it even after a chdir
        self.format = WavFormat.parse(format, "wav format")
        self.flush_interval = check_number(flush_interval, "flush_interval (seconds)",
                                           allow_low=True)
        self.resume = resume is not False
        self.sample_rate: int | None = None
        self.frames_written = 0  # in the current file
        self.total_frames = 0  # in all files
        self.paths = [self.path]  # every file written, in order
        #: who writes the file, for the error a second writer gets
        self.owner = "a WavSink in this process"
        #: with resume=True: frames found in an existing file (whole or not), else None
        self.existing_frames: int | None = None
        self._keep: int | None = None
        self._lock: ExclusiveFile | None = None
        self._opened = False
        self.closed = False
        self._last_sync = time.monotonic()
        self._header_frames = -1

    def prepare(self, sample_rate: int) -> None:
        """Lock the file (creating it if needed, truncating nothing) and, to resume, read it."""
        self.sample_rate = int(sample_rate)
        try:
            self._lock = ExclusiveFile(self.path, self.owner, "wav")
        except FileInUseError:
            raise
        except OSError as e:
            raise ConfigError(f"wav={str(self.path)!r} cannot be opened for writing: {e}") from e
        self._file = self._lock.file
        if self.resume and self._lock.existed:
            nxt = self._part(2)
            if nxt.exists():  # a run past 4 GiB: appending to its first file would lose the rest
                raise ConfigError(
                    f"resume: {str(self.path)!r} was continued in {str(nxt)!r} (a run past 4 GiB); "
                    "resuming such a WAV is not supported - resume with wav=None (the recording "
                    "keeps every step; `gradsonic render` rebuilds the audio)")
            self.existing_frames = self._existing_frames()

    def _existing_frames(self) -> int:
        """Frames of audio in the file to resume (those past a stale header too)."""
        assert self._file is not None
        raw = self._file.read(4096)
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return 0
        ours = self._header()
        fmt_end = 20 + struct.unpack("<I", ours[16:20])[0]  # "WAVE" + the fmt chunk
        same = (len(raw) >= len(ours) and raw[:4] == b"RIFF" and raw[12:fmt_end] == ours[12:fmt_end]
                and raw[len(ours) - 8:len(ours) - 4] == b"data")
        if not same:
            found = _describe_header(raw)
            raise ConfigError(
                f"resume: {str(self.path)!r} is {found}; this sonifier writes gradsonic's "
                f"{self.format.value} mono WAV at {self.sample_rate} Hz: resume with the same "
                "settings, or write to a new path")
        return (size - len(ours)) // self._bytes_per_frame

    def resume_at(self, frames: int) -> None:
        """Keep the first ``frames`` frames of the existing file (whole steps) and append."""
        if self.existing_frames is None or not 0 <= frames <= self.existing_frames:
            raise ValueError(f"cannot keep {frames} frames of {self.existing_frames}")
        self._keep = frames

    def _part(self, n: int) -> Path:
        """run-002.wav, run-003.wav, ...: where a run past 4 GiB goes on."""
        return self._base.with_name(f"{self._base.stem}-{n:03d}{self._base.suffix}")

    @staticmethod
    def _open(path: Path, owner: str) -> ExclusiveFile:
        lock = ExclusiveFile(path, owner, "wav")
        assert lock.file is not None
        lock.file.truncate(0)
        return lock

    def _roll(self) -> None:
        """Finish this file (final header) and go on in the next one: run-002.wav, ..."""
        assert self._file is not None and self._lock is not None
        self._write_header()
        self._file = None
        self._lock.close()
        path = self._part(len(self.paths) + 1)
        self._lock = self._open(path, self.owner)
        self._file = self._lock.file
        self.paths.append(path)
        self.frames_written = 0
        self._header_frames = -1
        self._write_header()

    @property
    def _bytes_per_sample(self) -> int:
        return 4 if self.format is WavFormat.FLOAT32 else 2

    @property
    def _bytes_per_frame(self) -> int:
        return self._bytes_per_sample * self.channels

    def open(self, sample_rate: int) -> None:
        if self._lock is None:  # used on its own, not through a sonifier
            self.prepare(sample_rate)
        assert self._file is not None
        try:
            keep = self._keep if self._keep is not None else (self.existing_frames or 0)
            bps = self._bytes_per_frame
            start = len(self._header()) if keep else 0
            if stat.S_ISREG(os.fstat(self._file.fileno()).st_mode):  # not /dev/full, a FIFO...
                self._file.truncate(start + keep * bps)  # no resume: truncate(0), empty
                self._file.seek(start + keep * bps)
            self.frames_written = self.total_frames = keep
            self._opened = True
            self._write_header()
            self.flush()  # a valid WAV is on disk from the start
        except OSError as e:
            raise ConfigError(f"wav={str(self.path)!r} cannot be written: {e}") from e

    def _header(self) -> bytes:
        assert self.sample_rate is not None
        bps, bpf, ch = self._bytes_per_sample, self._bytes_per_frame, self.channels
        data_bytes = self.frames_written * bpf
        if self.format is WavFormat.FLOAT32:
            fmt = struct.pack("<HHIIHHH", _WAVE_FORMAT_IEEE_FLOAT, ch, self.sample_rate,
                              self.sample_rate * bpf, bpf, 8 * bps, 0)
            extra = b"fact" + struct.pack("<II", 4, self.frames_written)
        else:
            fmt = struct.pack("<HHIIHH", _WAVE_FORMAT_PCM, ch, self.sample_rate,
                              self.sample_rate * bpf, bpf, 8 * bps)
            extra = b""
        body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
                + b"data" + struct.pack("<I", data_bytes))
        # RIFF size: everything after the 8-byte RIFF header (data is always of even length).
        return b"RIFF" + struct.pack("<I", len(body) + data_bytes) + body

    def _write_header(self) -> None:
        assert self._file is not None
        end = self._file.tell()
        self._file.seek(0)
        self._file.write(self._header())
        if end:
            self._file.seek(end)
        self._header_frames = self.frames_written

    def write(self, frames: np.ndarray) -> None:
        if self._file is None or self.closed:
            return
        x = np.asarray(frames, dtype=np.float32)
        if x.ndim != (1 if self.channels == 1 else 2) or (x.ndim == 2 and x.shape[1] != self.channels):
            raise SinkError(f"{self!r} writes {self.channels} channel(s); got frames of shape "
                            f"{x.shape}")
        n = x.shape[0]
        bps = self._bytes_per_frame
        if self.frames_written and (self.frames_written + n) * bps > self.max_data_bytes:
            self._roll()  # blocks hold whole steps, so every file holds whole steps
        if n * bps > _MAX_DATA_BYTES:
            raise SinkError(f"a block of {n} frames does not fit in one WAV file")
        if self.format is WavFormat.PCM16:
            data = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        else:
            data = x.astype("<f4", copy=False).tobytes()  # stereo: interleaved L R
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                n = self._file.write(view[written:])
                if not n:
                    raise OSError("write() wrote nothing")
                written += n
        finally:
            self.frames_written += written // bps
            self.total_frames += written // bps
        if (time.monotonic() - self._last_sync >= self.flush_interval
                or (self.frames_written - self._header_frames) >= self.flush_interval
                * (self.sample_rate or 0)):
            self.flush()

    def flush(self) -> None:
        if self._file is None or self.closed:
            return
        if self._header_frames != self.frames_written:
            self._write_header()
        os.fsync(self._file.fileno())
        self._last_sync = time.monotonic()

    def _close(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        self._file = None
        if not self._opened:  # prepared but never started (a constructor failed): leave the
            lock.close(discard=True)  # disk as it was - remove the file only if we created it
            return
        try:
            lock.file.seek(0, os.SEEK_END)  # type: ignore[union-attr]
            self._file = lock.file
            self._write_header()
        finally:
            self._file = None
            lock.close()


def _describe_header(raw: bytes) -> str:
    """What kind of file a WAV header describes, for error messages."""
    if len(raw) < 36 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return "not a WAV file"
    try:
        code, channels, rate = struct.unpack("<HHI", raw[20:28])
        bits = struct.unpack("<H", raw[34:36])[0]
    except struct.error:
        return "a WAV file of unknown layout"
    kind = {_WAVE_FORMAT_IEEE_FLOAT: "float", _WAVE_FORMAT_PCM: "pcm"}.get(code, f"format {code} ")
    return f"a {kind}{bits} WAV with {channels} channel(s) at {rate} Hz"


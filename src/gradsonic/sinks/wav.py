"""Streaming, crash-safe WAV writer (mono, float32 or 16-bit PCM).

Written by hand (RIFF is simple) rather than through libsndfile so that the file is exactly a
plain ``fmt ``/``fact``/``data`` WAV that every reader (scipy.io.wavfile included) opens without
warnings, and so that the header is rewritten on a schedule: once ``flush_interval`` seconds (1 s
by default) of wall time *or* of audio have passed since the last time, the header is updated and
the file flushed and ``fsync``-ed. A WAV holds at most 4 GiB (~6.7 h of float32 audio at 44.1 kHz):
a longer run goes on in ``run-002.wav``, ``run-003.wav``, ... (each a complete WAV of whole steps;
``sink.paths`` lists them). A SIGKILL or power loss therefore loses at most about one
second of the latest audio, plus the steps the sonifier's worker had not yet received (it
collects steps for up to ``max_delay`` = 0.1 s). ``close()`` writes the final header.

Samples are float32 as rendered; for ``"pcm16"`` they are clipped to [-1, 1] and stored as
``round(x * 32767)``.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._options import StrEnum, check_number
from ..errors import ConfigError, ConfigTypeError, SinkError
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
                 flush_interval: float = 1.0) -> None:
        self.path = check_writable(path)
        self.format = WavFormat.parse(format, "wav format")
        self.flush_interval = check_number(flush_interval, "flush_interval (seconds)",
                                           allow_low=True)
        self.sample_rate: int | None = None
        self.frames_written = 0  # in the current file
        self.total_frames = 0  # in all files
        self.paths = [self.path]  # every file written, in order
        try:
            self._file = self._open(self.path)
        except OSError as e:
            raise ConfigError(f"wav={str(path)!r} cannot be opened for writing: {e}") from e
        self.closed = False
        self._last_sync = time.monotonic()
        self._header_frames = -1

    @staticmethod
    def _open(path: Path) -> BinaryIO:
        # Unbuffered: every write is one syscall whose byte count we see, so after a failed
        # (partial) write the header still covers exactly the frames that reached the file.
        return open(path, "wb", buffering=0)

    def _roll(self) -> None:
        """Finish this file (final header) and go on in the next one: run-002.wav, ..."""
        assert self._file is not None
        self._write_header()
        self._file.close()
        self._file = None
        path = self.path.with_name(f"{self.path.stem}-{len(self.paths) + 1:03d}{self.path.suffix}")
        self._file = self._open(path)
        self.paths.append(path)
        self.frames_written = 0
        self._header_frames = -1
        self._write_header()

    @property
    def _bytes_per_sample(self) -> int:
        return 4 if self.format is WavFormat.FLOAT32 else 2

    def open(self, sample_rate: int) -> None:
        self.sample_rate = int(sample_rate)
        try:
            self._write_header()
            self.flush()  # a valid (empty) WAV is on disk from the start
        except OSError as e:
            raise ConfigError(f"wav={str(self.path)!r} cannot be written: {e}") from e

    def _header(self) -> bytes:
        assert self.sample_rate is not None
        bps = self._bytes_per_sample
        data_bytes = self.frames_written * bps
        if self.format is WavFormat.FLOAT32:
            fmt = struct.pack("<HHIIHHH", _WAVE_FORMAT_IEEE_FLOAT, 1, self.sample_rate,
                              self.sample_rate * bps, bps, 8 * bps, 0)
            extra = b"fact" + struct.pack("<II", 4, self.frames_written)
        else:
            fmt = struct.pack("<HHIIHH", _WAVE_FORMAT_PCM, 1, self.sample_rate,
                              self.sample_rate * bps, bps, 8 * bps)
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
        bps = self._bytes_per_sample
        if self.frames_written and (self.frames_written + x.size) * bps > self.max_data_bytes:
            self._roll()  # blocks hold whole steps, so every file holds whole steps
        if x.size * bps > _MAX_DATA_BYTES:
            raise SinkError(f"a block of {x.size} frames does not fit in one WAV file")
        if self.format is WavFormat.PCM16:
            data = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        else:
            data = x.astype("<f4", copy=False).tobytes()
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
        if self._file is None:
            return
        try:
            if self.sample_rate is None:  # never opened by a sonifier: still leave a valid file
                self.sample_rate = 44100
            self._write_header()
        finally:
            f, self._file = self._file, None
            f.close()

"""The norm recording: every step's per-layer norms in a compact, crash-safe, versioned file.

Format ``gradsonic-recording`` version 1 (little-endian)::

    magic       8 bytes   b"GSREC\\x00\\x01\\n"  (the second-to-last byte is the version)
    header_len  uint32    length of the JSON header that follows
    header      JSON      {"format", "version", "layer_names", "scalars", "settings", "versions",
                           "created", "run_id", "part"}
    rows        fixed-size, one per step, until the end of the file:
                int64 step | uint32 flags (bit 0: skipped by the optimizer) |
                float32 norms[L] (NaN where missing) | float32 scalars[S] (NaN if not logged) |
                uint8 missing[L] | zero padding to 8 bytes   (S = len(header["scalars"]))

Rows are appended as training runs and flushed + ``fsync``-ed at least every 0.5 s, so after a
crash or SIGKILL a reader gets every complete row written until then (a torn last row is
ignored). Memory stays flat: nothing is kept.

Voices can be added during a run (a layer unfrozen or added after attaching): the recording then
goes on in ``run-002.gsr``, ``run-003.gsr``, ... - each a complete recording whose header lists the
voices so far (the earlier ones first) and carries the same ``run_id`` with the next ``part``
number. :func:`read_recording` reads the parts of a run together. :func:`read_recording` returns the norms as a NumPy
array with the layer names and the settings the run used, so a run can be re-rendered
(``gradsonic render``) with the same or other settings.
"""

from __future__ import annotations

import datetime
import json
import os
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .accents import marks_of
from .errors import ConfigError
from .files import ExclusiveFile, FileInUseError
from .header import (MAGIC, VERSION, RecordingError, check_settings,  # noqa: F401 (re-exported)
                     parse_header, read_header)
from .sinks.base import Sink, StepBlock
from .sinks.wav import check_writable

FLAG_SKIPPED = 1


def _row_dtype(n_layers: int, n_scalars: int = 0) -> np.dtype:
    size = 8 + 4 + 4 * n_layers + 4 * n_scalars + n_layers
    pad = (-size) % 8
    fields = [("step", "<i8"), ("flags", "<u4"), ("norms", "<f4", (n_layers,))]
    if n_scalars:
        fields.append(("scalars", "<f4", (n_scalars,)))
    fields.append(("missing", "u1", (n_layers,)))
    if pad:
        fields.append(("pad", "u1", (pad,)))
    return np.dtype(fields)


class RecordSink(Sink):
    """Appends one row per step to a recording file (``GradientSonifier(record=...)``).

    Like :class:`~gradsonic.sinks.wav.WavSink`, the file is locked without truncation in
    :meth:`prepare` and only written in :meth:`open`; with ``resume=True`` an existing recording
    (its settings, scalars and voices checked against this run's) is cut back to the rows the
    sonifier keeps and appended to.
    """

    needs_frames = False
    _file: Any = None

    def __init__(self, path: str | os.PathLike[str], layer_names: tuple[str, ...],
                 settings: dict[str, Any], flush_interval: float = 0.5,
                 scalars: tuple[str, ...] = (), resume: bool = False) -> None:
        self.path = check_writable(path, "record")
        self._base = self.path.absolute()
        self.paths = [self.path]  # every part written, in order
        self.layer_names = tuple(layer_names)
        self.scalar_names = tuple(scalars)
        self.settings = json.loads(json.dumps(settings))  # as it will read back
        self.resume = resume is not False
        self.run_id = uuid.uuid4().hex
        self.owner = "a RecordSink in this process"
        #: with resume=True: the recording found at ``path`` (None if there was none)
        self.existing: Recording | None = None
        self._keep: int | None = None
        self._locks: list[ExclusiveFile] = []
        self._opened = False
        self.closed = False
        self.flush_interval = flush_interval
        self._last_sync = time.monotonic()
        self.rows_written = 0

    def prepare(self, sample_rate: int) -> None:
        """Lock the file (creating it if needed, truncating nothing); to resume, read and check
        what is there."""
        self._locks.append(self._lock(self.path))
        if not (self.resume and self._locks[0].existed and self.path.stat().st_size > 0):
            return
        rec = read_recording(self.path)
        differ = sorted(k for k in set(rec.settings) | set(self.settings)
                        if rec.settings.get(k) != self.settings.get(k))
        if differ:
            raise ConfigError(
                f"resume: {str(self.path)!r} was recorded with other settings: "
                + "; ".join(f"{k}: recorded {rec.settings.get(k)!r}, now "
                            f"{self.settings.get(k)!r}" for k in differ))
        if tuple(rec.scalars) != self.scalar_names:
            raise ConfigError(f"resume: {str(self.path)!r} stores scalars {list(rec.scalars)}; "
                              f"this run declares {list(self.scalar_names)}")
        self.existing = rec
        for part in rec.parts[1:]:
            self._locks.append(self._lock(part.path))

    def _lock(self, path: Path) -> ExclusiveFile:
        try:
            return ExclusiveFile(path, self.owner, "record")
        except FileInUseError:
            raise
        except OSError as e:
            raise ConfigError(f"record={str(path)!r} cannot be opened for writing: {e}") from e

    def resume_at(self, rows: int, layer_names: tuple[str, ...]) -> None:
        """Keep the first ``rows`` rows of the existing recording; go on with these voices."""
        if self.existing is None or not 0 <= rows <= len(self.existing.steps):
            raise ValueError(f"cannot keep {rows} rows")
        self._keep = rows
        self.layer_names = layer_names

    def open(self, sample_rate: int) -> None:
        if not self._locks:
            self.prepare(sample_rate)
        try:
            if self.existing is not None and self._keep is not None and self._keep > 0:
                self._continue(self.existing, self._keep)
            else:
                self._locks[0].file.truncate(0)  # type: ignore[union-attr]
                for lock in self._locks[1:]:  # later parts of a run resumed from its start
                    lock.close()
                    os.unlink(lock.path)
                del self._locks[1:]
                self._start(self._locks[0], self.layer_names)
        except OSError as e:
            raise ConfigError(f"record={str(self.path)!r} cannot be written: {e}") from e
        self._opened = True

    def _continue(self, rec: "Recording", keep: int) -> None:
        """Cut the recording back to ``keep`` rows (dropping later parts) and append."""
        self.run_id = rec.run_id or self.run_id
        at = 0
        for i, part in enumerate(rec.parts):
            if at + part.rows >= keep:
                break
            at += part.rows
        for lock in self._locks[i + 1:]:
            lock.close()
            os.unlink(lock.path)
        del self._locks[i + 1:]
        self.paths = [p.path for p in rec.parts[:i + 1]]
        names = rec.parts[i].layer_names
        self._dtype = _row_dtype(len(names), len(self.scalar_names))
        f = self._locks[i].file
        end = part.header_bytes + (keep - at) * self._dtype.itemsize
        f.truncate(end)  # a torn last row from a crash goes too
        f.seek(end)
        self._file = f
        if names != self.layer_names:  # the run goes on with more voices
            self._next_part(self.layer_names)
        else:
            os.fsync(f.fileno())

    def _start(self, lock: ExclusiveFile, layer_names: tuple[str, ...]) -> None:
        """Write the header of a part with these voices into the locked, empty file."""
        self.layer_names = layer_names
        self._dtype = _row_dtype(len(self.layer_names), len(self.scalar_names))
        header = json.dumps({
            "format": "gradsonic-recording", "version": VERSION,
            "layer_names": list(self.layer_names), "scalars": list(self.scalar_names),
            "settings": self.settings,
            "versions": {"gradsonic": __version__, "torch": _torch_version(),
                         "numpy": np.__version__},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "run_id": self.run_id, "part": len(self.paths),
        }).encode()
        self._file = lock.file
        self._file.seek(0)
        self._file.write(MAGIC + struct.pack("<I", len(header)) + header)
        os.fsync(self._file.fileno())

    def _next_part(self, layer_names: tuple[str, ...]) -> None:
        """Voices were added: finish this part and go on in run-002.gsr, run-003.gsr, ..."""
        os.fsync(self._file.fileno())
        self._file = None
        # from the absolute path taken at construction: the program may have changed directory
        path = part_path(self._base, len(self.paths) + 1)
        lock = self._lock(path)
        self._locks.append(lock)
        lock.file.truncate(0)  # type: ignore[union-attr]
        self.paths.append(path)
        self._start(lock, layer_names)

    def write(self, frames: np.ndarray) -> None:  # pragma: no cover - rows come via write_steps
        pass

    def write_steps(self, frames: np.ndarray | None, block: StepBlock) -> None:
        if self._file is None:
            return
        if block.layer_names and block.layer_names != self.layer_names:
            self._next_part(block.layer_names)
        rows = np.zeros(block.count, dtype=self._dtype)
        rows["step"] = block.first_step + np.arange(block.count)
        rows["flags"] = np.where(block.skipped, FLAG_SKIPPED, 0)
        rows["norms"] = block.norms
        rows["missing"] = block.missing
        if self.scalar_names:
            values = np.full((block.count, len(self.scalar_names)), np.nan, dtype=np.float32)
            for i, logged in enumerate(block.scalars or []):
                for j, name in enumerate(self.scalar_names):
                    if name in logged:
                        values[i, j] = logged[name]
            rows["scalars"] = values
        self._file.write(rows.tobytes())
        self.rows_written += block.count
        if time.monotonic() - self._last_sync >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._last_sync = time.monotonic()

    def _close(self) -> None:
        f, self._file = self._file, None
        locks, self._locks = self._locks, []
        try:
            if f is not None and self._opened:
                os.fsync(f.fileno())
        finally:
            for lock in locks:
                lock.close(discard=not self._opened)


def part_path(path: Path, part: int) -> Path:
    """Where part ``part`` (2, 3, ...) of the recording at ``path`` goes: run-002.gsr, ..."""
    return path.with_name(f"{path.stem}-{part:03d}{path.suffix}")


@dataclass(frozen=True)
class Part:
    """One file of a recording: where it is, its header's size, its rows and voices."""

    path: Path
    header_bytes: int
    rows: int
    layer_names: tuple[str, ...]


@dataclass
class Recording:
    """A recording read back: ``norms[steps, voices]`` float32 (NaN where missing).

    ``voice_counts[i]`` is how many voices (the first ones of ``layer_names``) the run had at
    step ``i``: voices added during a run are missing before they existed."""

    path: Path
    layer_names: tuple[str, ...]
    steps: np.ndarray
    norms: np.ndarray
    missing: np.ndarray
    skipped: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    scalars: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [steps], NaN if unset
    voice_counts: np.ndarray | None = None
    run_id: str | None = None
    parts: list[Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.voice_counts is None:
            self.voice_counts = np.full(len(self.steps), len(self.layer_names), dtype=np.intp)

    @property
    def nonfinite(self) -> np.ndarray:
        return ~np.isfinite(self.norms) & ~self.missing

    def sounded(self, every: int | None = None) -> np.ndarray:
        """``[steps]``: the steps the run played (``every``: the recorded setting by default):
        every Nth and each with an alarm (:func:`gradsonic.mapping.sounded`)."""
        from .mapping import sounded

        every = every or int(self.settings.get("every") or 1)
        return sounded(self.steps, every, self.norms, self.missing, self.skipped)

    @property
    def accents(self) -> np.ndarray:
        """``[steps, voices]`` accent bits, rebuilt from the norms exactly as the run made them
        (:mod:`gradsonic.accents`; all 0 if the run had accents off)."""
        return marks_of(self.norms, self.missing, self.settings.get("accents"))


def _torch_version() -> str:
    """The version of the torch that trains (imported by then; never imported here)."""
    torch = sys.modules.get("torch")
    return str(getattr(torch, "__version__", "unknown"))


def row_dtype(header: dict[str, Any]) -> np.dtype:
    """The dtype of one row of a recording file with this header."""
    return _row_dtype(len(header["layer_names"]), len(header.get("scalars", [])))


def continues(first: dict[str, Any], prev: dict[str, Any], header: dict[str, Any],
              part: int) -> bool:
    """Whether ``header`` is part ``part`` of the run that ``first`` (part 1) started, right
    after the part whose header is ``prev``."""
    names = prev["layer_names"]
    return (header.get("run_id") == first["run_id"] and header.get("part") == part
            and header["layer_names"][:len(names)] == names
            and header.get("scalars", []) == first.get("scalars", []))


def _read_part(p: Path) -> tuple[dict[str, Any], np.ndarray, int]:
    """Header, rows (whole ones only) and header size of one recording file."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise RecordingError(f"cannot read recording {str(p)!r}: {e}") from e
    header, size = parse_header(raw, p)
    dtype = row_dtype(header)
    body = raw[size:]
    rows = np.frombuffer(body[: len(body) // dtype.itemsize * dtype.itemsize], dtype=dtype)
    return header, rows, size


def _check_rows(p: Path, steps: np.ndarray, flags: np.ndarray,
                parts: list[tuple[dict[str, Any], np.ndarray, int]]) -> None:
    """Rows as a writer writes them: step numbers >= 0 that only grow, known flag bits, missing
    bytes 0 or 1 (rows read with the wrong voice count - a header naming 5 voices over 4-voice
    rows - fail these)."""
    bad = None
    if len(steps) and (steps[0] < 0 or (np.diff(steps) <= 0).any()):
        bad = "step numbers that do not grow"
    elif (flags & ~np.uint32(FLAG_SKIPPED)).any():
        bad = "unknown row flags"
    elif any(len(rows) and (rows["missing"] > 1).any() for _, rows, _ in parts):
        bad = "missing-voice bytes other than 0 and 1"
    if bad is not None:
        raise RecordingError(f"{str(p)!r}: the recording's rows have {bad} (corrupted, or a "
                             "header that does not match its rows)")


def read_recording(path: str | os.PathLike[str]) -> Recording:
    """Read a recording (also one still being written, or cut short by a crash), with the
    parts that continue it (``run-002.gsr``, ... of the same run, when voices were added).

    Raises :class:`RecordingError` (a ``ValueError``) naming the file for anything truncated,
    corrupted or not a recording."""
    p = Path(path)
    parts = [_read_part(p)]
    first = parts[0][0]
    check_settings(first.get("settings", {}), p)
    while first.get("run_id"):
        nxt = part_path(p, len(parts) + 1)
        if not nxt.exists():
            break
        header, rows, size = _read_part(nxt)
        if not continues(first, parts[-1][0], header, len(parts) + 1):
            break
        parts.append((header, rows, size))
    names = tuple(parts[-1][0]["layer_names"])
    scalar_names = first.get("scalars", [])
    total = sum(len(rows) for _, rows, _ in parts)
    norms = np.full((total, len(names)), np.nan, dtype=np.float32)
    missing = np.ones((total, len(names)), dtype=bool)
    steps = np.empty(total, dtype=np.int64)
    flags = np.empty(total, dtype=np.uint32)
    counts = np.empty(total, dtype=np.intp)
    scalars = np.full((total, len(scalar_names)), np.nan, dtype=np.float32)
    at = 0
    infos = []
    for i, (header, rows, size) in enumerate(parts):
        k = len(header["layer_names"])
        sl = slice(at, at + len(rows))
        norms[sl, :k] = rows["norms"]
        missing[sl, :k] = rows["missing"].astype(bool)
        steps[sl] = rows["step"]
        flags[sl] = rows["flags"]
        counts[sl] = k
        if scalar_names:
            scalars[sl] = rows["scalars"]
        at += len(rows)
        infos.append(Part(p if i == 0 else part_path(p, i + 1), size, len(rows),
                          tuple(header["layer_names"])))
    _check_rows(p, steps, flags, parts)
    return Recording(p, names, steps, norms, missing, (flags & FLAG_SKIPPED) > 0,
                     first.get("settings", {}), first.get("versions", {}),
                     str(first.get("created", "")),
                     {n: scalars[:, j].copy() for j, n in enumerate(scalar_names)}, counts,
                     first.get("run_id"), infos)

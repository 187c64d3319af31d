"""Follow a recording as it grows, from another process: the reading side of ``gradsonic serve``.

A recording (:mod:`gradsonic.recording`) is append-only with fixed-size rows and its writer never
buffers, so a reader needs no help from the training process: the number of whole rows is
``(size - header) // row size`` at any moment (a torn last row is simply not there yet), and row
``i`` is at a fixed offset. :class:`Tail` keeps only each part's header and row count and reads
the rows it is asked for straight from the files, so following a run of any length costs constant
memory. Parts added when voices grow (``run-002.gsr``, ...) are picked up as they appear; a file
that gets *shorter* (a job resumed from an earlier checkpoint cuts its recording back) or is
replaced by another run raises :class:`TailReset`.

:func:`encode` turns rows into what the browser page receives: per step the step number, one
float32 norm and one byte of bits per voice, one byte of flags (a few bytes per voice per step,
base64 in JSON). The accent marks are computed here, from the ``window`` rows before the first
row asked for, so any range read alone carries exactly the marks the live run made.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .accents import AccentDetector, resolve_accents
from .recording import (FLAG_SKIPPED, RecordingError, check_settings, continues, part_path,
                        read_header, row_dtype)

#: bits of the per-voice byte a page receives
MISSING_BIT, SPIKE_BIT, COLLAPSE_BIT = 1, 2, 4
MAX_BATCH = 4096  # rows per encoded batch
ARRAYS = ("steps", "norms", "bits", "skipped")  # the arrays of a batch, in this order


class TailReset(Exception):
    """The recording got shorter or was replaced: whoever follows it starts again."""


@dataclass
class _Part:
    path: Path
    header: dict[str, Any]
    header_bytes: int
    dtype: np.dtype
    start: int  # index of its first row in the whole run
    rows: int = 0
    inode: int = 0
    fd: int = -1  # opened once: rows are read from this file, whatever the path points to later

    @property
    def voices(self) -> int:
        return len(self.header["layer_names"])


@dataclass
class Rows:
    """Rows ``first .. first + len(steps)`` of a run, voices padded to the most any row has."""

    first: int
    steps: np.ndarray  # int64 [n]
    norms: np.ndarray  # float32 [n, V], NaN where missing
    missing: np.ndarray  # bool [n, V]
    skipped: np.ndarray  # bool [n]
    voice_counts: np.ndarray  # intp [n]


class Tail:
    """One recording followed as it grows (see the module docstring).

    Each part is opened once and read through that descriptor, so a path swapped for a symlink
    (or removed) later does not change what is read. ``guard``, if given, is called with the
    real path of each part as opened and must return True (the server: "inside the served
    folder"); otherwise the part is refused with a :class:`RecordingError`. Rows read are
    checked as a writer writes them (growing steps, known flags). Close it when done (or use
    ``with``).
    """

    def __init__(self, path: str | os.PathLike[str],
                 guard: Callable[[str], bool] | None = None) -> None:
        self.path = Path(path)
        self.guard = guard
        self.parts: list[_Part] = []
        fd = self._open(self.path)
        try:
            header, size = read_header(self.path, fd)
            check_settings(header.get("settings", {}), self.path)
        except BaseException:
            os.close(fd)
            raise
        self.parts = [_Part(self.path, header, size, row_dtype(header), 0,
                            inode=os.fstat(fd).st_ino, fd=fd)]
        self.accents = resolve_accents(header.get("settings", {}).get("accents"))
        self.refresh()

    def _open(self, path: Path) -> int:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        if self.guard is not None:
            real = os.path.realpath(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") \
                else os.path.realpath(path)
            if not self.guard(real):
                os.close(fd)
                raise RecordingError(f"{path.name} does not lie inside the served folder")
        return fd

    def close(self) -> None:
        for part in self.parts:
            if part.fd >= 0:
                os.close(part.fd)
                part.fd = -1

    def __enter__(self) -> "Tail":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @property
    def header(self) -> dict[str, Any]:
        return self.parts[0].header

    @property
    def settings(self) -> dict[str, Any]:
        return self.header.get("settings", {})

    @property
    def layer_names(self) -> list[str]:
        return list(self.parts[-1].header["layer_names"])

    @property
    def rows(self) -> int:
        last = self.parts[-1]
        return last.start + last.rows

    def refresh(self) -> int:
        """Look at the files again; the number of whole rows now. Raises :class:`TailReset` if
        the recording got shorter or another run replaced it."""
        for part in self.parts:
            try:
                st = part.path.stat()
                size = os.fstat(part.fd).st_size
            except OSError as e:
                raise TailReset(f"{part.path.name} is gone ({e})") from None
            rows = (size - part.header_bytes) // part.dtype.itemsize
            if st.st_ino != part.inode or rows < part.rows:
                raise TailReset(f"{str(part.path)!r} was cut back or replaced")
            if part is not self.parts[-1] and rows != part.rows:
                raise TailReset(f"{str(part.path)!r} grew after the next part began")
            part.rows = rows
        while self.header.get("run_id"):
            nxt = part_path(self.path, len(self.parts) + 1)
            try:
                fd = self._open(nxt)
            except (RecordingError, OSError):
                break  # not there (or outside the folder)
            try:
                header, size = read_header(nxt, fd)
                inode = os.fstat(fd).st_ino
            except (RecordingError, OSError):
                os.close(fd)
                break  # its header is not whole yet
            if not continues(self.header, self.parts[-1].header, header, len(self.parts) + 1):
                os.close(fd)
                break
            last = self.parts[-1]
            part = _Part(nxt, header, size, row_dtype(header), last.start + last.rows,
                         inode=inode, fd=fd)
            part.rows = max(0, (os.fstat(fd).st_size - size) // part.dtype.itemsize)
            self.parts.append(part)
        return self.rows

    def _part_at(self, row: int) -> int:
        for i, part in enumerate(self.parts):
            if row < part.start + part.rows or i == len(self.parts) - 1:
                return i
        return len(self.parts) - 1

    def read(self, lo: int, hi: int) -> Rows:
        """Rows ``lo .. hi - 1`` (clipped to the whole rows known at the last refresh)."""
        lo, hi = max(0, lo), min(hi, self.rows)
        n = max(0, hi - lo)
        voices = max((p.voices for p in self.parts if p.start < hi and p.start + p.rows > lo),
                     default=self.parts[-1].voices)
        out = Rows(lo, np.zeros(n, np.int64), np.full((n, voices), np.nan, np.float32),
                   np.ones((n, voices), bool), np.zeros(n, bool), np.zeros(n, np.intp))
        row = lo
        while row < hi:
            part = self.parts[self._part_at(row)]
            end = min(hi, part.start + part.rows)
            size = part.dtype.itemsize
            want = (end - row) * size
            data = os.pread(part.fd, want, part.header_bytes + (row - part.start) * size)
            if len(data) < want:  # cut back since the last refresh (a resume): start again
                raise TailReset(f"{part.path.name} was cut back")
            got = np.frombuffer(data, dtype=part.dtype)
            _check(got, part.path)
            at, k = row - lo, len(got)
            if k == 0:
                break
            out.steps[at:at + k] = got["step"]
            out.skipped[at:at + k] = (got["flags"] & FLAG_SKIPPED) > 0
            out.norms[at:at + k, :part.voices] = got["norms"]
            out.missing[at:at + k, :part.voices] = got["missing"].astype(bool)
            out.voice_counts[at:at + k] = part.voices
            row += k
        return out

    def batches(self, lo: int, hi: int, raw: bool = False) -> list[dict[str, Any]]:
        """:meth:`encode`-d rows ``lo .. hi - 1`` (with ``raw``: :meth:`arrays`), in batches of
        at most ``MAX_BATCH`` rows that never span two parts (each has one voice count)."""
        out = []
        hi = min(hi, self.rows)
        while lo < hi:
            part = self.parts[self._part_at(lo)]
            end = min(hi, lo + MAX_BATCH, part.start + part.rows)
            out.append(self.arrays(lo, end) if raw else self.encode(lo, end))
            lo = end
        return out

    def marks(self, rows: Rows) -> np.ndarray:
        """The accent marks of these rows, exactly as the live run made them: the detector looks
        at the ``window`` rows before each step only, so it warms up on those before ``lo``."""
        if self.accents is None or not len(rows.steps):
            return np.zeros(rows.norms.shape, np.uint8)
        detector = AccentDetector(self.accents)
        warm = self.read(rows.first - self.accents.window, rows.first)
        voices = rows.norms.shape[1]
        if len(warm.steps):
            detector.mark(warm.norms[:, :voices], warm.missing[:, :voices])
        return detector.mark(rows.norms, rows.missing)

    def arrays(self, lo: int, hi: int) -> dict[str, Any]:
        """Rows ``lo .. hi - 1`` as a view receives them (see the module docstring), as arrays:
        ``first``, ``n``, ``voices`` and the little-endian ``steps`` (f8), ``norms`` (f4 [n, voices]),
        ``bits`` (u1 [n, voices]) and ``skipped`` (u1)."""
        rows = self.read(lo, hi)
        voices = int(rows.voice_counts.max()) if len(rows.steps) else self.parts[-1].voices
        marks = self.marks(rows)[:, :voices]
        bits = (np.where(rows.missing[:, :voices], MISSING_BIT, 0)
                | np.where(marks & 1, SPIKE_BIT, 0) | np.where(marks & 2, COLLAPSE_BIT, 0))
        return {"first": rows.first, "n": len(rows.steps), "voices": voices,
                "steps": rows.steps.astype("<f8"),
                "norms": np.ascontiguousarray(rows.norms[:, :voices], "<f4"),
                "bits": bits.astype(np.uint8), "skipped": rows.skipped.astype(np.uint8)}

    def encode(self, lo: int, hi: int) -> dict[str, Any]:
        """Rows ``lo .. hi - 1`` as the page receives them: :meth:`arrays` in base64."""
        out = self.arrays(lo, hi)
        for key in ARRAYS:
            out[key] = b64(out[key])
        return out

    def view_meta(self) -> dict[str, Any]:
        """What a view of this run (the serve page, the notebook widget) needs to draw and
        synthesise it exactly as gradsonic would: its voices, settings, mapping and the synth's
        settings and tables (envelope, alarm noise, click: computed by the Python synth)."""
        from .errors import ConfigError
        from .mapping import LogMapping, mapping_from_settings, mapping_settings
        from .render import synth_from_settings
        from .synth import OVER_PEAK

        settings = self.settings
        note = None
        try:
            mapping = mapping_from_settings(settings.get("mapping", {"kind": "log"}))
        except ConfigError:
            mapping = LogMapping()
            note = ("this run used a custom mapping, which a page cannot rebuild: it plays "
                    "with the default log mapping")
        synth, _ = synth_from_settings(settings, mapping=mapping)
        return {
            "layer_names": self.layer_names, "rows": self.rows,
            "settings": settings, "created": self.header.get("created"),
            "mapping": mapping_settings(mapping),
            "mapping_note": note,
            "synth": {"sample_rate": synth.sample_rate, "channels": synth.channels,
                      "layout": synth.layout.value, "tone_samples": synth.tone_samples,
                      "silence_samples": synth.silence_samples, "min_hz": synth.min_hz,
                      "max_hz": synth.max_hz, "over_peak": OVER_PEAK,
                      "every": int(settings.get("every") or 1),
                      **{name: b64(table.astype("<f4"))
                         for name, table in synth.tables().items()}},
        }


def _check(rows: np.ndarray, path: Path) -> None:
    """Rows as a writer writes them, or a RecordingError (see recording.read_recording)."""
    steps = rows["step"]
    bad = None
    if len(steps) and (steps[0] < 0 or (np.diff(steps) <= 0).any()):
        bad = "step numbers that do not grow"
    elif (rows["flags"] & ~np.uint32(FLAG_SKIPPED)).any():
        bad = "unknown row flags"
    elif (rows["missing"] > 1).any():
        bad = "missing-voice bytes other than 0 and 1"
    if bad is not None:
        raise RecordingError(f"{path.name}: the recording's rows have {bad} (corrupted, or a "
                             "header that does not match its rows)")


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")

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

Rows are appended as training runs and flushed + ``fsync``-ed at least every second, so after a
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
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import ConfigError
from .sinks.base import Sink, StepBlock
from .sinks.wav import check_writable

MAGIC = b"GSREC\x00\x01\n"
VERSION = 1
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
    """Appends one row per step to a recording file (``GradientSonifier(record=...)``)."""

    needs_frames = False
    _file: Any = None

    def __init__(self, path: str | os.PathLike[str], layer_names: tuple[str, ...],
                 settings: dict[str, Any], flush_interval: float = 1.0,
                 scalars: tuple[str, ...] = ()) -> None:
        self.path = check_writable(path, "record")
        self.paths = [self.path]  # every part written, in order
        self.scalar_names = tuple(scalars)
        self.settings = settings
        self.run_id = uuid.uuid4().hex
        try:
            self._start(self.path, tuple(layer_names))
        except OSError as e:
            raise ConfigError(f"record={str(path)!r} cannot be written: {e}") from e
        self.closed = False
        self.flush_interval = flush_interval
        self._last_sync = time.monotonic()
        self.rows_written = 0

    def _start(self, path: Path, layer_names: tuple[str, ...]) -> None:
        """Open ``path`` and write the header of a part with these voices."""
        import torch

        self.layer_names = layer_names
        self._dtype = _row_dtype(len(self.layer_names), len(self.scalar_names))
        header = json.dumps({
            "format": "gradsonic-recording", "version": VERSION,
            "layer_names": list(self.layer_names), "scalars": list(self.scalar_names),
            "settings": self.settings,
            "versions": {"gradsonic": __version__, "torch": torch.__version__,
                         "numpy": np.__version__},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "run_id": self.run_id, "part": len(self.paths),
        }).encode()
        self._file = open(path, "wb", buffering=0)
        self._file.write(MAGIC + struct.pack("<I", len(header)) + header)
        os.fsync(self._file.fileno())

    def _next_part(self, layer_names: tuple[str, ...]) -> None:
        """Voices were added: finish this part and go on in run-002.gsr, run-003.gsr, ..."""
        f, self._file = self._file, None
        os.fsync(f.fileno())
        f.close()
        path = part_path(self.path, len(self.paths) + 1)
        self.paths.append(path)
        self._start(path, layer_names)

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
        if f is not None:
            try:
                os.fsync(f.fileno())
            finally:
                f.close()


def part_path(path: Path, part: int) -> Path:
    """Where part ``part`` (2, 3, ...) of the recording at ``path`` goes: run-002.gsr, ..."""
    return path.with_name(f"{path.stem}-{part:03d}{path.suffix}")


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

    def __post_init__(self) -> None:
        if self.voice_counts is None:
            self.voice_counts = np.full(len(self.steps), len(self.layer_names), dtype=np.intp)

    @property
    def nonfinite(self) -> np.ndarray:
        return ~np.isfinite(self.norms) & ~self.missing


def _read_part(p: Path) -> tuple[dict[str, Any], np.ndarray]:
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read recording {str(p)!r}: {e}") from e
    if raw[:6] != MAGIC[:6]:
        raise ConfigError(f"{str(p)!r} is not a gradsonic recording (bad magic)")
    if raw[6] != VERSION:
        raise ConfigError(f"{str(p)!r} is recording format version {raw[6]}; this gradsonic "
                          f"reads version {VERSION}")
    (n,) = struct.unpack("<I", raw[8:12])
    header = json.loads(raw[12:12 + n])
    dtype = _row_dtype(len(header["layer_names"]), len(header.get("scalars", [])))
    body = raw[12 + n:]
    rows = np.frombuffer(body[: len(body) // dtype.itemsize * dtype.itemsize], dtype=dtype)
    return header, rows


def read_recording(path: str | os.PathLike[str]) -> Recording:
    """Read a recording (also one still being written, or cut short by a crash), with the
    parts that continue it (``run-002.gsr``, ... of the same run, when voices were added)."""
    p = Path(path)
    parts = [_read_part(p)]
    first = parts[0][0]
    while first.get("run_id"):
        nxt = part_path(p, len(parts) + 1)
        if not nxt.exists():
            break
        header, rows = _read_part(nxt)
        if header.get("run_id") != first["run_id"] or header.get("part") != len(parts) + 1:
            break
        parts.append((header, rows))
    names = tuple(parts[-1][0]["layer_names"])
    scalar_names = first.get("scalars", [])
    total = sum(len(rows) for _, rows in parts)
    norms = np.full((total, len(names)), np.nan, dtype=np.float32)
    missing = np.ones((total, len(names)), dtype=bool)
    steps = np.empty(total, dtype=np.int64)
    flags = np.empty(total, dtype=np.uint32)
    counts = np.empty(total, dtype=np.intp)
    scalars = np.full((total, len(scalar_names)), np.nan, dtype=np.float32)
    at = 0
    for header, rows in parts:
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
    return Recording(p, names, steps, norms, missing, (flags & FLAG_SKIPPED) > 0,
                     first.get("settings", {}), first.get("versions", {}),
                     first.get("created", ""),
                     {n: scalars[:, j].copy() for j, n in enumerate(scalar_names)}, counts)

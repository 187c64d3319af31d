"""The runs a server offers: every recording under its root, by id, and what is wrong with the
ones it cannot read.

A run's id is its path relative to the root (with ``/``); a request names a run only by an id
found here, so no path from a request ever reaches the file system. Each lookup re-checks that
the file still lies inside the root (a symlink swapped in after the listing is refused). A
recording that cannot be read - corrupted, settings out of bounds, a later part whose first part
is gone - is listed under ``problems`` with its reason and never affects another run.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..files import writer_pid
from ..follow import MAX_BATCH, Tail, TailReset
from ..recording import RecordingError, read_header

RUNS_SECONDS = 1.0  # how long the list of runs under the root is reused
YOUNG_SECONDS = 5.0  # a file this new may still be getting its header: not yet a problem
_PART = re.compile(r"^(?P<stem>.+)-(?P<n>\d{3,4})\.gsr$")


class Catalogue:
    """The recordings under ``root`` (a folder searched for them, or one recording)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self._headers: dict[Path, tuple[int, int, str | None]] = {}  # inode, part, run_id
        self._runs: tuple[float, dict[str, Path]] | None = None
        #: recordings under the root that cannot be read, by id -> why
        self.problems: dict[str, str] = {}
        self._said: dict[str, str] = {}

    @property
    def name(self) -> str:
        """What responses call the root: its name, never its absolute path."""
        return self.root.name

    def runs(self) -> dict[str, Path]:
        """Every recording under the root, by id; later parts of a run (``run-002.gsr``) belong
        to their first part and are not listed. Looked up again at most every
        ``RUNS_SECONDS``."""
        now = time.monotonic()
        if self._runs is None or now - self._runs[0] > RUNS_SECONDS:
            self._runs = (now, self._find())
        return self._runs[1]

    def path(self, run_id: str) -> Path | None:
        """The file of run ``run_id``, if it is listed and (still) inside the root."""
        p = self.runs().get(run_id)
        if p is None or not self._inside(p):
            return None
        return p

    def _inside(self, p: Path) -> bool:
        return self.guard(os.path.realpath(p))

    def guard(self, real: str) -> bool:
        """Whether a real path (of a file as opened) lies inside the served root."""
        if self.root.suffix == ".gsr" and not self.root.is_dir():  # one run: it and its parts
            folder, name = os.path.split(self.real_root)
            part = _PART.match(os.path.basename(real))
            return real == self.real_root or (
                os.path.dirname(real) == folder and part is not None
                and f"{part['stem']}.gsr" == name)
        return os.path.commonpath([real, self.real_root]) == self.real_root

    def tail(self, path: Path) -> Tail:
        """The run's file opened for reading, refused if what was opened lies outside."""
        return Tail(path, self.guard)

    def redact(self, text: str) -> str:
        """A message without the absolute path of the served folder."""
        for root in {str(self.root.absolute()), self.real_root}:
            text = text.replace(root + os.sep, "").replace(root, self.name)
        return text

    def _find(self) -> dict[str, Path]:
        if self.root.is_file() or self.root.suffix == ".gsr":
            return {self.root.name: self.root} if self.root.is_file() else {}
        if not self.root.is_dir():
            return {}  # not there yet: runs appear when the first job starts
        found: dict[str, Path] = {}
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(".gsr"):
                    continue
                p = Path(folder) / name
                if not self._inside(p):
                    continue  # a symlink leading outside the root
                run_id = p.relative_to(self.root).as_posix()
                if self._first_part(p, run_id):
                    found[run_id] = p
        return found

    def _first_part(self, p: Path, run_id: str) -> bool:
        """Whether ``p`` starts a run (part 1); a file that is not (yet) a readable recording
        is listed among the problems once it is older than ``YOUNG_SECONDS`` (a job that just
        started has no whole header yet: that is not a problem)."""
        try:
            inode = p.stat().st_ino
            cached = self._headers.get(p)
            if cached is None or cached[0] != inode:
                header, _ = read_header(p)
                cached = (inode, header.get("part", 1), header.get("run_id"))
                self._headers[p] = cached
            part = cached[1]
            if part != 1 and not self._has_first(p, cached[2]):
                raise RecordingError(f"{p.name} is part {part} of a run whose first part is "
                                     "missing")
            self.problems.pop(run_id, None)
            return part == 1
        except (RecordingError, OSError) as e:
            self.problem(run_id, p, e)
            return False

    def _has_first(self, p: Path, run_id: str | None) -> bool:
        hit = _PART.match(p.name)
        if hit is None or run_id is None:
            return False
        first = p.with_name(f"{hit['stem']}.gsr")
        try:
            header, _ = read_header(first)
        except (RecordingError, OSError):
            return False
        return header.get("run_id") == run_id

    def problem(self, run_id: str, p: Path, e: BaseException) -> None:
        """List ``run_id`` as unreadable (unless the file is brand new), saying why once."""
        try:
            young = time.time() - p.stat().st_mtime < YOUNG_SECONDS
        except OSError:
            young = True
        if young:
            return
        why = self.redact(str(e))
        if self._said.get(run_id) != why:  # once per reason, however often it is looked at
            print(f"gradsonic serve: skipping {run_id}: {why}", file=sys.stderr, flush=True)
            self._said[run_id] = why
        self.problems[run_id] = why

    def listing(self) -> dict[str, Any]:
        """``/api/runs``: the readable runs, newest first, and the problems."""
        out = []
        for run_id, p in self.runs().items():
            try:
                out.append(self.describe(run_id, p))
            except (RecordingError, OSError, TailReset, ValueError) as e:
                self.problem(run_id, p, e)
        out.sort(key=lambda r: -r["modified"])
        return {"root": self.name, "runs": out,
                "problems": [{"id": k, "error": v} for k, v in sorted(self.problems.items())]}

    def describe(self, run_id: str, path: Path) -> dict[str, Any]:
        with self.tail(path) as tail:
            return self._describe(run_id, path, tail)

    def _describe(self, run_id: str, path: Path, tail: Tail) -> dict[str, Any]:
        rows = tail.rows
        tail.read(0, MAX_BATCH)  # the rows are checked as they are read: the first ones now
        last = tail.read(rows - 1, rows) if rows else None
        name = run_id if self.root.is_dir() else f"{path.parent.name}/{path.name}"
        return {"id": run_id, "name": name, "rows": rows,
                "latest_step": int(last.steps[0]) if last is not None and len(last.steps) else None,
                "voices": len(tail.layer_names), "writing": writer_pid(path) is not None,
                "modified": max(p.path.stat().st_mtime for p in tail.parts)}

    def meta(self, run_id: str, path: Path) -> dict[str, Any]:
        """What the page needs to draw and synthesise a run exactly as gradsonic would."""
        with self.tail(path) as tail:
            return self._meta(run_id, path, tail)

    def _meta(self, run_id: str, path: Path, tail: Tail) -> dict[str, Any]:
        return {"id": run_id, "writing": writer_pid(path) is not None, **tail.view_meta()}

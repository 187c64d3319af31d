"""Where a run's files go, and one writer per file.

* :func:`new_run_folder` makes a fresh per-run folder, ``gradsonic-runs/<date>-<time>-<host>-<pid>``
  (like TensorBoard's ``runs/<date>_<host>``), so two jobs started in one folder never share a file.
* :class:`ExclusiveFile` opens a file for writing *without truncating it* and takes an advisory
  lock on it: ``fcntl.flock`` against other processes (released by the kernel when the process
  dies, even by SIGKILL) plus an in-process registry (the lock alone cannot name a writer in this
  process). Only once every file of a sonifier is locked, and every check has passed, is anything
  truncated - a constructor that raises leaves the disk as it was.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
from pathlib import Path
from typing import BinaryIO

from .errors import GradsonicError

try:
    import fcntl
except ImportError:  # Windows: the in-process registry only
    fcntl = None  # type: ignore[assignment]


class FileInUseError(GradsonicError, RuntimeError):
    """Another sonifier (in this process or another) is writing the file."""


_holders: dict[str, str] = {}  # realpath -> who writes it, in this process
_holders_lock = threading.Lock()


def new_run_folder(root: str | os.PathLike[str] = "gradsonic-runs") -> Path:
    """Create and return ``root/<YYYYmmdd-HHMMSS>-<host>-<pid>`` (``-2``, ``-3``... if taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    host = socket.gethostname().split(".")[0] or "host"
    base = Path(root) / f"{stamp}-{host}-{os.getpid()}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name under {str(base.parent)!r}")


def writer_pid(path: Path) -> int | None:
    """The process holding a writer's flock on ``path``, read from Linux's /proc/locks (without
    taking any lock, so a reader never races a writer that is starting); None if none is
    listed or this is not Linux."""
    try:
        st = path.stat()
        want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == want:
                return int(fields[4])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _other_process(path: Path) -> str:
    """Describe the process holding a flock on ``path``, if it can."""
    pid = writer_pid(path)
    if pid is None:
        return "another process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"process {pid} ({cmd[:120]})"


class ExclusiveFile:
    """A file opened read-write without truncation and locked for this writer alone."""

    file: BinaryIO | None = None

    def __init__(self, path: Path, owner: str, what: str) -> None:
        self.path = path
        self.existed = path.exists()
        self._key = os.path.realpath(path)
        with _holders_lock:
            other = _holders.get(self._key)
            if other is not None:
                raise FileInUseError(
                    f"{what}={str(path)!r} is being written by {other}; close() that one first, "
                    "or write to another path (one writer per file)")
            _holders[self._key] = owner
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            self._forget()
            raise
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._forget()
                raise FileInUseError(
                    f"{what}={str(path)!r} is being written by {_other_process(path)}; one "
                    "writer per file: stop it, or write to another path") from None
        # Unbuffered: every write is one syscall whose byte count we see, so after a failed
        # (partial) write the header still covers exactly what reached the file.
        self.file = open(fd, "r+b", buffering=0)

    def _forget(self) -> None:
        with _holders_lock:
            _holders.pop(self._key, None)

    def close(self, discard: bool = False) -> None:
        """Unlock and close; ``discard`` also removes the file if this writer created it."""
        f, self.file = self.file, None
        if f is None:
            return
        try:
            if discard and not self.existed:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            f.close()  # closing the descriptor releases the flock
        finally:
            self._forget()

"""SIGTERM -> SystemExit, so that a terminated run still finalises its files.

Python's default for SIGTERM kills the process on the spot: no ``finally``, no ``atexit``, and a
WAV whose header was last written up to a second ago. When a sonifier is created on the main
thread and SIGTERM still has its default action, gradsonic installs a handler that raises
``SystemExit(143)`` (128 + SIGTERM, the shell's convention) instead: the training loop unwinds,
``with`` blocks and ``atexit`` close every sonifier, and the process exits with status 143. A second
SIGTERM while unwinding kills at once. A handler the program installed itself is left alone.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _sigterm_to_exit(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def install_sigterm_exit() -> bool:
    """Install the handler if possible; return whether it is in place."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _sigterm_to_exit:
        return True
    if current is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    return True

"""The threads gradsonic runs beside training (the worker, a page server, a notebook widget's
follower) ask for less of the CPU than training's own threads."""

from __future__ import annotations

import os
import sys
import threading

NICE = 10  # how much lower these threads' scheduling priority is than training's


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: niceness is per thread) so that
    training's threads win the CPU: this thread's work then fills the moments a core would idle
    (between kernels, in the data loader) instead of delaying a parallel kernel. It still gets
    its share when the machine is busy: nice 10 weighs a tenth of a normal thread, and these
    threads need a few percent of one core at most. Elsewhere (macOS: a thread id is no process id)
    nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICE))
    except (AttributeError, OSError):  # not allowed (a sandbox): the default priority
        pass

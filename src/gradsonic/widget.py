"""A run's view inside a notebook output: ``son.widget()`` and ``gradsonic.notebook.show(path)``.

The widget is the serve page's view (``web/view.js`` with ``web/synth.js``: one JS synth, the
same plot, pitch strip, voices and controls) fed through the kernel's own comm channel instead of
a second port, so it works wherever Jupyter widgets do (JupyterLab, Notebook 7, VS Code, Colab).
It is an anywidget: one ES module and a stylesheet, no front-end build or extension to install.

The rows come from the run's recording, followed with :class:`~gradsonic.follow.Tail` like the
server does, by one thread per widget: at most one message every ``SEND_SECONDS`` (whatever the
step rate) carrying every new row as binary buffers, ``MESSAGE_BYTES`` at most. Custom messages
that reach the browser before its module has loaded are lost, and a browser's requests wait while
a cell runs, so: the module says ``hello`` (with the row it needs next) when it loads; until then,
for ``OPENING_SECONDS``, each message starts again at row 0 while that fits in one message; and a
gap the browser sees is asked for (``want``) and sent as soon as the kernel is free.
"""

from __future__ import annotations

import importlib.resources
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

try:
    import anywidget
    import traitlets
except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError("the notebook widget needs anywidget: pip install anywidget "
                              "(or pip install 'gradsonic[notebook]')") from e

from ._threads import lower_priority
from .files import writer_pid
from .follow import ARRAYS, MAX_BATCH, Tail, TailReset

SEND_SECONDS = 0.1  # at most one message of rows per this long (10 a second)
MESSAGE_BYTES = 8 << 20  # of row data per message
OPENING_SECONDS = 5.0  # until the browser's hello, messages start again at row 0 this long
FINISHED_SECONDS = 2.0  # a finished run is looked at this much longer (a late part, a resume)


def _web(name: str) -> str:
    return importlib.resources.files("gradsonic.web").joinpath(name).read_text("utf-8")


class RunWidget(anywidget.AnyWidget):
    """One run's live view in a notebook output (see the module docstring). Made by
    :meth:`GradientSonifier.widget` and :func:`gradsonic.notebook.show`."""

    _esm = _web("synth.js") + "\n" + _web("view.js") + "\n" + _web("widget.js")
    _css = _web("view.css")
    #: the run's settings and synth tables (what the serve page's /api/run says)
    meta = traitlets.Dict().tag(sync=True)

    def __init__(self, path: str | os.PathLike[str], name: str | None = None,
                 writing: Callable[[], bool] | None = None) -> None:
        path = Path(path)
        self._tail = Tail(path)
        self._path = path
        self._writing_fn = writing or (lambda: writer_pid(path) is not None)
        self._lock = threading.Lock()
        self._next = 0  # the next row to send
        self._voices = len(self._tail.layer_names)
        self._hello = False
        self._opened = time.monotonic()
        self._writing = bool(self._writing_fn())
        super().__init__(meta={"id": name or path.name, "name": name or path.name,
                               "writing": self._writing, **self._tail.view_meta()})
        self.on_msg(self._browser)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_follow, args=(weakref.ref(self), self._stop),
                                        name="gradsonic-widget", daemon=True)
        self._thread.start()

    @property
    def rows_sent(self) -> int:
        return self._next

    def _browser(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """A message from the browser (handled when the kernel is free): hello or want."""
        if not isinstance(content, dict):
            return
        with self._lock:
            if content.get("kind") == "hello":
                self._hello = True
            if content.get("kind") in ("hello", "want"):
                try:
                    self._next = max(0, min(self._next, int(content.get("from", 0))))
                except (TypeError, ValueError):
                    return
        self.poll()

    def poll(self) -> bool:
        """Send what is new (one message at most); False once the run is finished and sent."""
        with self._lock:
            writing = bool(self._writing_fn())  # first: rows written before it stopped are read
            try:
                rows = self._tail.refresh()
            except TailReset:
                self._tail.close()
                self._tail = Tail(self._path)
                self._next, self._voices = 0, 0
                self.send({"kind": "reset"})
                rows = self._tail.rows
            if (not self._hello and time.monotonic() - self._opened < OPENING_SECONDS
                    and rows > self._next and self._bytes(0, rows) <= MESSAGE_BYTES):
                self._next = 0  # the browser may have missed what came before its module loaded
            if rows > self._next:
                self._send_rows(rows)
            if writing != self._writing:
                self._writing = writing
                self.send({"kind": "state", "writing": writing})
            return writing or rows > self._next

    def _bytes(self, lo: int, hi: int) -> int:
        return (hi - lo) * (10 + 5 * max(self._voices, 1))

    def _send_rows(self, rows: int) -> None:
        batches, buffers, size = [], [], 0
        lo = self._next
        while lo < rows and size < MESSAGE_BYTES:
            hi = min(rows, lo + max(1, min(MAX_BATCH, (MESSAGE_BYTES - size) // self._bytes(0, 1))))
            for b in self._tail.batches(lo, hi, raw=True):
                if b["voices"] > self._voices:
                    self._voices = b["voices"]
                    self._flush(batches, buffers)
                    batches, buffers, size = [], [], 0
                    self.send({"kind": "voices",
                               "layer_names": self._tail.layer_names[:self._voices]})
                batches.append({"first": b["first"], "n": b["n"], "voices": b["voices"]})
                buffers.extend(memoryview(b[k]).cast("B") for k in ARRAYS)
                size += sum(b[k].nbytes for k in ARRAYS)
                lo = b["first"] + b["n"]
        self._flush(batches, buffers)
        self._next = lo

    def _flush(self, batches: list[dict[str, int]], buffers: list[Any]) -> None:
        if batches:
            self.send({"kind": "rows", "batches": batches}, buffers)

    def close(self) -> None:
        """Stop following the run and close the widget (its output shows nothing more)."""
        if hasattr(self, "_stop"):  # (not when the recording could not be opened)
            self._stop.set()
            self._tail.close()
        super().close()


def _follow(ref: "weakref.ref[RunWidget]", stop: threading.Event) -> None:
    """The widget's thread: poll every SEND_SECONDS while the run is written (and a little
    after); holds the widget weakly, so a widget nobody shows any more is let go."""
    lower_priority()
    finished_at = None
    while not stop.wait(SEND_SECONDS):
        w = ref()
        if w is None:
            return
        try:
            more = w.poll()
        except Exception:  # the file went away or bad: what was sent stays in the browser
            return
        del w
        if more:
            finished_at = None
        elif finished_at is None:
            finished_at = time.monotonic()
        elif time.monotonic() - finished_at > FINISHED_SECONDS:
            return

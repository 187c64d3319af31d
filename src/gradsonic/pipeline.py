"""The worker: everything a step's norms go through after the training thread queued them.

One thread per sonifier consumes :class:`~gradsonic.norms.PendingNorms` in blocks: it resolves the
norms (waiting for the device off the training thread), marks accents, calls ``on_step``, feeds
the recording and the loggers every step, and renders the sounded steps (``every=N`` and every
alarm) into frames for the audio sinks (:mod:`gradsonic.mapping` -> :mod:`gradsonic.synth` ->
:mod:`gradsonic.sinks`). A failure in any of them is reported once and never reaches training.
It holds no reference to the model.
"""

from __future__ import annotations

import inspect
import math
import queue
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._threads import lower_priority
from .accents import AccentDetector, Accents
from .errors import SinkPaused
from .mapping import ALARM, SILENT, plan_tones, sounded
from .norms import PendingNorms, StepRecord, resolve_block
from .sinks.base import Sink, StepBlock
from .synth import Synth

_MAX_BATCH = 512  # steps rendered together by the worker


@dataclass
class Stats:
    """Counters kept by the worker (read them after :meth:`GradientSonifier.flush`)."""

    steps: int = 0  # steps rendered
    frames: int = 0  # audio frames produced
    alarm_tones: int = 0  # layer tones replaced by the NaN/Inf alarm
    alarm_steps: int = 0  # steps with at least one alarm
    silent_tones: int = 0  # layer tones silent because the layer had no gradient


class Command:
    __slots__ = ("kind", "done")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = threading.Event()


class Worker(threading.Thread):
    """Consumes pending steps; renders and writes in batches. Holds no reference to the model."""

    def __init__(self, mapping: Callable[[np.ndarray], np.ndarray], synth: Synth,
                 sinks: list[Sink], on_step: Callable[[StepRecord], Any] | None,
                 max_pending: int, accents: Accents | None = None, every: int = 1) -> None:
        super().__init__(name="gradsonic-worker", daemon=True)
        self.queue: queue.Queue[PendingNorms | Command] = queue.Queue(max_pending)
        self.urgent = threading.Event()  # set with each command: no batching wait
        self.mapping = mapping
        self.synth = synth
        self.sinks = sinks
        # Held weakly (the sonifier holds it): a bound method of an object that holds the
        # sonifier must not keep both alive through this thread.
        self.on_step = weak_callable(on_step)
        self.any_step = False  # a step was queued (else a warning at exit says how to attach)
        self.detector = AccentDetector(accents) if accents is not None else None
        self.every = every
        #: (freqs, kinds) of the last step rendered: the ambient layout glides on from it
        self.prev: tuple[np.ndarray, np.ndarray] | None = None
        self.stats = Stats()
        # How long steps may pile up before the worker renders them: the tightest latency any
        # sink asks for (a file needs none to speak of; live audio needs ~20 ms).
        self.interval = min([s.max_delay for s in sinks], default=Sink.max_delay)
        # A sink that can wait longer than the worker wakes (files and loggers beside live
        # audio) is handed its steps in merged blocks at its own pace: one write per its
        # max_delay, not one per wake-up.
        self.held: dict[int, tuple[float, list[tuple[str, np.ndarray | None, StepBlock]]]] = {}
        self.errors: list[tuple[str, BaseException, str]] = []
        self.reported = 0  # errors already reported (on the training thread or on stderr)
        self.caller_reports = False  # close() reports what is left; at gc/exit, stderr does
        self.audio_ok = True

    def command(self, cmd: Command) -> None:
        """Queue a command (after the steps already queued) and wake the worker for it."""
        self.queue.put(cmd)
        self.urgent.set()

    def _fail(self, where: str, exc: BaseException) -> None:
        self.errors.append((where, exc, "".join(traceback.format_exception(exc))))

    def next_report(self, after: str) -> str | None:
        """The text of the oldest unreported error (marked reported), ending in ``after``."""
        if self.reported >= len(self.errors):
            return None
        where, exc, tb = self.errors[self.reported]
        self.reported += 1
        if isinstance(exc, SinkPaused):  # a notice, not a fault: no traceback
            return f"gradsonic: {where}: {exc}; {after}"
        return f"gradsonic: {where} failed: {exc!r}; {after}\n{tb}"

    def run(self) -> None:
        lower_priority()
        stop: Command | None = None
        last = -math.inf  # when the training thread took the last step rendered
        while stop is None:
            items = [self.queue.get()]
            first = items[0]
            if not isinstance(first, Command):
                # Let steps pile up for a moment (sleeping, without the GIL): rendering many
                # steps per wake-up costs training far less than waking up for every step. A
                # command (flush, close) cuts the wait short. Steps further apart than the wait
                # (a 50 ms step beside live audio's 20 ms) would not pile up: render at once,
                # one wake-up per step instead of two, and 20 ms sooner on the speakers.
                if first.time - last < self.interval:
                    self.urgent.wait(self.interval)
            self.urgent.clear()
            while len(items) < _MAX_BATCH:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            pending: list[PendingNorms] = []
            for item in items:
                if isinstance(item, Command):
                    self._process(pending)
                    self._hand_held(force=True)
                    pending = []
                    if item.kind == "flush":
                        self._flush_sinks()
                        item.done.set()
                    elif item.kind == "drain":  # the steps before it are rendered
                        item.done.set()
                    else:
                        stop = item
                else:
                    pending.append(item)
                    last = item.time
            self._process(pending)
            self._hand_held()
        self._close_sinks()
        stop.done.set()

    def _process(self, pending: list[PendingNorms]) -> None:
        start = 0
        for i in range(1, len(pending) + 1):  # one block per run of steps with the same voices
            if i == len(pending) or pending[i].layer_names is not pending[start].layer_names:
                try:
                    self._process_block(pending[start:i])
                except BaseException as e:  # a bug here must not kill the worker (training
                    self._fail("worker (audio now disabled)", e)  # would hang)
                    self.audio_ok = False
                start = i

    def _process_block(self, pending: list[PendingNorms]) -> None:
        try:
            norms, missing, skipped = resolve_block(pending)
        except BaseException as e:  # a device error while reading norms: keep training alive
            self._fail("reading gradient norms", e)
            return
        marks = (self.detector.mark(norms, missing) if self.detector is not None
                 else np.zeros(norms.shape, dtype=np.uint8))
        on_step = self.on_step() if self.on_step is not None else None
        if on_step is not None:
            for i, p in enumerate(pending):
                try:
                    on_step(StepRecord(p.step, norms[i].copy(), missing[i].copy(),
                                       p.layer_names, bool(skipped[i]), marks[i].copy()))
                except BaseException as e:
                    self._fail("on_step callback (now disabled)", e)
                    self.on_step = None
                    break
        block = StepBlock(pending[0].step, len(pending), self.synth.step_samples(norms.shape[1]),
                          self.synth.tone_samples,
                          np.fromiter((p.time for p in pending), float, len(pending)),
                          norms, missing, skipped, _scalars(pending), pending[0].layer_names,
                          marks)
        self._write([s for s in self.sinks if not s.needs_frames], None, block)  # recordings
        for sink in [s for s in self.sinks if s.wants_norms]:  # loggers' scalars
            self._hand(sink, "norms", None, block)
        if not self.audio_ok:
            return
        if self.every > 1:  # sound every Nth step and every alarm (the recording has them all)
            numbers = np.fromiter((p.step for p in pending), np.int64, len(pending))
            keep = sounded(numbers, self.every, norms, missing, skipped)
            if not keep.any():
                return
            idx = np.flatnonzero(keep)
            norms, missing, skipped, marks = norms[idx], missing[idx], skipped[idx], marks[idx]
            block = StepBlock(pending[idx[0]].step, len(idx), block.step_frames,
                              block.tone_frames, block.times[idx], norms, missing, skipped,
                              None, block.layer_names, marks, numbers[idx])
            pending = [pending[i] for i in idx]
        try:
            freqs, kinds = plan_tones(self.mapping, norms, missing, skipped)
            frames = self.synth.render(freqs, kinds, marks, self.prev)
            self.prev = (freqs[-1].copy(), kinds[-1].copy())
        except BaseException as e:
            self._fail("mapping/synthesis (audio now disabled)", e)
            self.audio_ok = False
            return
        alarms = kinds == ALARM
        s = self.stats
        s.steps += len(pending)
        s.frames += frames.size
        s.alarm_tones += int(alarms.sum())
        s.alarm_steps += int(alarms.any(axis=1).sum())
        s.silent_tones += int((kinds == SILENT).sum())
        self._write([s for s in self.sinks if s.needs_frames], frames, block)

    def _write(self, sinks: list[Sink], frames: np.ndarray | None, block: StepBlock) -> None:
        for sink in sinks:
            self._hand(sink, "steps", frames, block)

    def _hand(self, sink: Sink, what: str, frames: np.ndarray | None, block: StepBlock) -> None:
        """Give ``sink`` this block now, or hold it while the sink can wait (see ``held``)."""
        if sink.max_delay > self.interval:
            since, held = self.held.setdefault(id(sink), (time.monotonic(), []))
            if held and held[-1][2].layer_names is not block.layer_names:
                self._hand_over(sink)  # (merged blocks share their voices)
                since, held = self.held.setdefault(id(sink), (time.monotonic(), []))
            held.append((what, frames, block))
            if time.monotonic() - since >= sink.max_delay:
                self._hand_over(sink)
            return
        self._deliver(sink, what, frames, block)

    def _hand_held(self, force: bool = False) -> None:
        now = time.monotonic()
        for sink in list(self.sinks):
            since, held = self.held.get(id(sink), (now, []))
            if held and (force or now - since >= sink.max_delay):
                self._hand_over(sink)

    def _hand_over(self, sink: Sink) -> None:
        _, held = self.held.pop(id(sink), (0.0, []))
        for what in ("norms", "steps"):
            part = [(f, b) for w, f, b in held if w == what]
            if part:
                frames = [f for f, _ in part]
                self._deliver(sink, what, None if frames[0] is None else np.concatenate(frames),
                              StepBlock.merge([b for _, b in part]))

    def _deliver(self, sink: Sink, what: str, frames: np.ndarray | None,
                 block: StepBlock) -> None:
        if sink not in self.sinks:  # dropped after an earlier failure
            return
        try:
            if what == "norms":
                sink.write_norms(block)
            else:
                sink.write_steps(frames, block)
        except SinkPaused as e:
            self._fail(f"{sink!r} is paused, not stopped", e)  # (kept: it may go on)
        except BaseException as e:
            self._drop(sink, e)

    def _drop(self, sink: Sink, exc: BaseException) -> None:
        self._fail(f"sink {sink!r} (now stopped)", exc)
        self.sinks.remove(sink)
        try:
            sink.close()
        except BaseException:
            pass

    def _flush_sinks(self) -> None:
        for sink in list(self.sinks):
            try:
                sink.flush()
            except BaseException as e:
                self._drop(sink, e)

    def _close_sinks(self) -> None:
        for sink in list(self.sinks):
            try:
                sink.close()
            except BaseException as e:
                self._fail(f"closing sink {sink!r}", e)
        self.sinks = []


def _scalars(pending: list[PendingNorms]) -> list[dict[str, float]] | None:
    """The son.log() values of a block as floats (tensors are read here, off the training
    thread); None when nothing was logged."""
    if not any(p.scalars for p in pending):
        return None
    return [{k: float(v) for k, v in (p.scalars or {}).items()} for p in pending]


def weak_callable(fn: Callable[..., Any] | None) -> Callable[[], Any] | None:
    """A getter of ``fn`` that does not keep it (or the object of a bound method) alive."""
    if fn is None:
        return None
    try:
        return weakref.WeakMethod(fn) if inspect.ismethod(fn) else weakref.ref(fn)
    except TypeError:  # builtins (list.append) and objects without weak references
        return lambda: fn


def finish(worker: Worker, handles: list[Any], server: Any = None) -> None:
    """Remove the hooks, drain and stop the worker, stop the server; runs from close(), at
    garbage collection (hooks hold the sonifier weakly: an abandoned sonifier is collected even
    while its optimizer lives on), or at exit."""
    for h in handles:
        h.remove()
    handles.clear()
    stop(worker)
    if server is not None:
        server.close()
    if not worker.caller_reports:  # garbage collection or interpreter exit: nobody to warn
        if not worker.any_step:
            say(f"GradsonicWarning: {NO_STEP}")
        print_errors(worker)


NO_STEP = ("gradsonic heard no optimizer step: wrap the optimizer you step "
           "(optimizer = son.wrap(optimizer)), or call son.step() after backward() in a loop "
           "that updates parameters by hand")


def say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed
        pass


def print_errors(worker: Worker) -> None:
    """Report the worker's unreported errors on stderr (no training thread left to warn)."""
    while (text := worker.next_report("the data written before it is kept.")) is not None:
        say(f"GradsonicWarning: {text}")


def stop(worker: Worker) -> None:
    if worker.is_alive():
        worker.command(Command("stop"))
        worker.join()

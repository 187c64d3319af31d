"""GradientSonifier: attach to a model, hear every optimizer step.

The training thread does one fused norm reduction and an O(1) enqueue per step
(:mod:`gradsonic.tap`). A worker thread owned by the sonifier resolves the norms, calls
``on_step``, maps norms to pitches (:mod:`gradsonic.mapping`), renders tones
(:mod:`gradsonic.synth`) and writes them to every sink (:mod:`gradsonic.sinks`).
"""

from __future__ import annotations

import inspect
import os
import queue
import sys
import threading
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ._signals import install_sigterm_exit
from .accents import AccentDetector, Accents, resolve_accents
from .errors import ConfigError, ConfigTypeError, GradsonicError, GradsonicWarning
from .files import new_run_folder
from .mapping import (ALARM, SILENT, MappingLike, mapping_settings, plan_tones, resolve_mapping,
                      sounded)
from .recording import RecordSink
from .sinks.base import Sink, StepBlock
from .sinks.live import LiveSink
from .sinks.wav import WavFormat, WavSink, check_writable
from .synth import Synth
from .tap import NormTap, PendingNorms, StepRecord, resolve_block

_MAX_BATCH = 512  # steps rendered together by the worker


class ClosedError(GradsonicError, RuntimeError):
    """The sonifier was used after close()."""


@dataclass
class Stats:
    """Counters kept by the worker (read them after :meth:`GradientSonifier.flush`)."""

    steps: int = 0  # steps rendered
    frames: int = 0  # audio frames produced
    alarm_tones: int = 0  # layer tones replaced by the NaN/Inf alarm
    alarm_steps: int = 0  # steps with at least one alarm
    silent_tones: int = 0  # layer tones silent because the layer had no gradient


class _Command:
    __slots__ = ("kind", "done")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.done = threading.Event()


class _Worker(threading.Thread):
    """Consumes pending steps; renders and writes in batches. Holds no reference to the model."""

    def __init__(self, mapping: Callable[[np.ndarray], np.ndarray], synth: Synth,
                 sinks: list[Sink], on_step: Callable[[StepRecord], Any] | None,
                 max_pending: int, accents: Accents | None = None, every: int = 1) -> None:
        super().__init__(name="gradsonic-worker", daemon=True)
        self.queue: queue.Queue[PendingNorms | _Command] = queue.Queue(max_pending)
        self.mapping = mapping
        self.synth = synth
        self.sinks = sinks
        # Held weakly (the sonifier holds it): a bound method of an object that holds the
        # sonifier must not keep both alive through this thread.
        self.on_step = _weak_callable(on_step)
        self.any_step = False  # a step was queued (else a warning at exit says how to attach)
        self.detector = AccentDetector(accents) if accents is not None else None
        self.every = every
        self.stats = Stats()
        # How long steps may pile up before the worker renders them: the tightest latency any
        # sink asks for (a file needs none to speak of; live audio needs ~20 ms).
        self.interval = min([s.max_delay for s in sinks], default=Sink.max_delay)
        self.errors: list[tuple[str, BaseException, str]] = []
        self.reported = 0  # errors already reported (on the training thread or on stderr)
        self.caller_reports = False  # close() reports what is left; at gc/exit, stderr does
        self.audio_ok = True

    def _fail(self, where: str, exc: BaseException) -> None:
        self.errors.append((where, exc, "".join(traceback.format_exception(exc))))

    def run(self) -> None:
        stop: _Command | None = None
        while stop is None:
            items = [self.queue.get()]
            if not isinstance(items[0], _Command):
                # Let steps pile up for a moment (sleeping, without the GIL): rendering many
                # steps per wake-up costs training far less than waking up for every step.
                time.sleep(self.interval)
            while len(items) < _MAX_BATCH:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            pending: list[PendingNorms] = []
            for item in items:
                if isinstance(item, _Command):
                    self._process(pending)
                    pending = []
                    if item.kind == "flush":
                        self._flush_sinks()
                        item.done.set()
                    else:
                        stop = item
                else:
                    pending.append(item)
            self._process(pending)
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
            try:
                sink.write_norms(block)
            except BaseException as e:
                self._drop(sink, e)
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
            frames = self.synth.render(freqs, kinds, marks)
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
            try:
                sink.write_steps(frames, block)
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


def _process_rank() -> int | None:
    """This process's rank under torch.distributed; before ``init_process_group``, the one a
    launcher gave it (torchrun, accelerate, DeepSpeed and Lightning set ``RANK``); else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = os.environ.get("RANK", "")
    return int(rank) if rank.isdigit() else None


def _weak_callable(fn: Callable[..., Any] | None) -> Callable[[], Any] | None:
    """A getter of ``fn`` that does not keep it (or the object of a bound method) alive."""
    if fn is None:
        return None
    try:
        return weakref.WeakMethod(fn) if inspect.ismethod(fn) else weakref.ref(fn)
    except TypeError:  # builtins (list.append) and objects without weak references
        return lambda: fn


def _finish(worker: _Worker, handles: list[Any], server: Any = None) -> None:
    """Remove the hooks, drain and stop the worker, stop the server; runs from close(), at
    garbage collection (hooks hold the sonifier weakly: an abandoned sonifier is collected even
    while its optimizer lives on), or at exit."""
    for h in handles:
        h.remove()
    handles.clear()
    _stop(worker)
    if server is not None:
        server.close()
    if not worker.caller_reports:  # garbage collection or interpreter exit: nobody to warn
        if not worker.any_step:
            _print(f"GradsonicWarning: {NO_STEP}")
        _print_errors(worker)


NO_STEP = ("gradsonic heard no optimizer step: wrap the optimizer you step "
           "(optimizer = son.wrap(optimizer)), or call son.step() after backward() in a loop "
           "that updates parameters by hand")


def _print(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed
        pass


def _print_errors(worker: _Worker) -> None:
    """Report the worker's unreported errors on stderr (no training thread left to warn)."""
    while worker.reported < len(worker.errors):
        where, exc, tb = worker.errors[worker.reported]
        worker.reported += 1
        _print(f"GradsonicWarning: gradsonic: {where} failed: {exc!r}; the data written "
               f"before it is kept.\n{tb}")


def _stop(worker: _Worker) -> None:
    if worker.is_alive():
        cmd = _Command("stop")
        worker.queue.put(cmd)
        worker.join()


class GradientSonifier:
    """Turns each optimizer step's per-layer gradient norms into tones.

    Args:
        model: the model whose layers to listen to.
        layers: ``None`` (every trainable parameter but biases, in voices: see
            :mod:`gradsonic.voices`), or a list of modules, parameters, names and glob patterns.
        voices: at most this many voices (default 16): a model with more layer voices is heard
            in groups that follow its structure (blocks, stages), each group's norm the norm of
            all its gradients; ``"all"``: one voice per layer; or ``{"name": [patterns]}``.
        layout: ``"sequence"`` (default: one tone per voice, one after another, mono) or
            ``"chord"`` (all voices at once, panned left to right by depth, stereo: a step lasts
            one tone).
        accents: mark a voice that spikes (>= 3x its running median) or collapses (to 1/1000 of
            it) with a louder, percussive tone (:mod:`gradsonic.accents`); ``False`` turns them
            off; an :class:`~gradsonic.accents.Accents` sets the thresholds.
        every: sound every Nth optimizer step (steps 0, N, 2N, ...); on_step and the recording
            still get every step.
        wav: ``"auto"`` (default): ``run.wav`` in this run's folder (``run_dir``); a path, written
            as given; or ``None`` for no WAV.
        mapping: ``"log"`` (default, see :class:`~gradsonic.mapping.LogMapping`), ``"seed"``
            (``200 + 100 * norm`` Hz), or any callable ``norms -> Hz``.
        sample_rate, tone_duration, silence_duration, amplitude: the sound layout; one tone of
            ``tone_duration`` s per layer, then ``silence_duration`` s (default 2 tone lengths).
        on_step: ``callable(record: StepRecord)``, called on the worker thread in step order.
        wav_format: ``"float32"`` (default) or ``"pcm16"``.
        record: the norm recording (:mod:`gradsonic.recording`) of every step's norms and the
            settings, which ``gradsonic render``/``info``/``plot`` read: ``"auto"`` (default):
            ``run.gsr`` in this run's folder when the WAV is there too (``wav="auto"``), else
            none; a path; or ``None``.
        run_dir: the folder of this run's ``"auto"`` files. ``None`` (default): a fresh
            ``gradsonic-runs/<date>-<time>-<host>-<pid>/``, so no run ever overwrites another.
        resume: append to the WAV and recording already there (a preempted job started again
            with the same ``run_dir`` or paths): ``True`` continues after the last step both hold
            whole (a torn tail is cut back); a step number (the checkpoint's) keeps only the steps
            before it and continues there. Settings and voices must match. Missing files start
            fresh.
        quiet: do not print the line saying where the files go.
        scalars: names of extra per-step values stored in the recording via :meth:`log`.
        live: ``True`` to play through the speakers (PyAudio, policy ``"drop"``), or a
            :class:`~gradsonic.sinks.live.LiveSink` for device, policy and latency. Without
            PyAudio or an output device: one warning, and everything else goes on.
        sinks: more :class:`~gradsonic.sinks.base.Sink` objects to feed (closed with the sonifier).
        max_pending: steps that may wait for the worker before ``step()`` blocks (bounds memory).
        handle_sigterm: turn SIGTERM into ``SystemExit(143)`` so files are finalised (see
            :mod:`gradsonic._signals`); only when SIGTERM still has its default action.
        rank: under torch.distributed, the one rank that makes sound and files (0); the others
            stay silent and cost nothing. ``None``: every process sounds its own gradients.
        serve: also serve this run to a browser page (:mod:`gradsonic.server`, the in-process
            ``gradsonic serve``): ``True`` (http://127.0.0.1:6070/), a port, or
            ``"host:port"`` (any address but loopback gets a token, printed in the URL). The
            server follows the recording and stops at :meth:`close` (pages keep what they got).
    """

    _worker: _Worker | None = None
    _made: list[Path] = []
    _made_folder: Path | None = None
    _rank_open = False
    _warmup: tuple[np.ndarray, np.ndarray] | None = None
    _inert = False
    _last_pending: PendingNorms | None = None
    _closed = True
    _handles: list[Any] = []
    #: the browser page's server (``serve=``), or None
    server: Any = None

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[nn.Module | str] | None = None,
        wav: str | os.PathLike[str] | None = "auto",
        mapping: MappingLike = "log",
        sample_rate: int = 44100,
        tone_duration: float = 0.01,
        silence_duration: float | None = None,
        amplitude: float = 0.1,
        on_step: Callable[[StepRecord], Any] | None = None,
        *,
        record: str | os.PathLike[str] | None = "auto",
        voices: int | str | dict[str, Any] = 16,
        layout: str = "sequence",
        accents: bool | Accents = True,
        every: int = 1,
        run_dir: str | os.PathLike[str] | None = None,
        resume: bool | int = False,
        quiet: bool = False,
        scalars: Sequence[str] = (),
        live: bool | LiveSink = False,
        wav_format: str = "float32",
        sinks: Iterable[Sink] = (),
        max_pending: int = 4096,
        handle_sigterm: bool = True,
        rank: int | None = 0,
        serve: bool | int | str | None = None,
    ) -> None:
        self.mapping = resolve_mapping(mapping)
        self.synth = Synth(sample_rate, tone_duration, silence_duration, amplitude, layout)
        self.accents = resolve_accents(accents)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be an integer >= 1 (sound every Nth step), not "
                              f"{every!r}")
        self.every = every
        self._tap = NormTap(model, layers, voices)
        wav_format = WavFormat.parse(wav_format, "wav_format")
        if on_step is not None and not callable(on_step):
            raise ConfigTypeError(f"on_step must be a callable or None, not {on_step!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigError(f"max_pending must be an integer >= 1, not {max_pending!r}")
        if isinstance(sinks, Sink) or not isinstance(sinks, Iterable):
            raise ConfigTypeError(f"sinks must be a list of gradsonic.sinks.Sink objects, not "
                                  f"{sinks!r}")
        extra = list(sinks)
        for s in extra:
            if not isinstance(s, Sink):
                raise ConfigTypeError(
                    f"sinks must hold gradsonic.sinks.Sink objects, not {type(s).__name__}")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ConfigError(f"rank must be a process rank (int >= 0) or None, not {rank!r}")
        if not isinstance(handle_sigterm, bool):
            raise ConfigTypeError(f"handle_sigterm must be True or False, not {handle_sigterm!r}")
        if not isinstance(live, (bool, LiveSink)):
            raise ConfigTypeError(f"live must be True, False or a LiveSink, not {live!r}")
        self._handles = []
        self._step = 0
        if isinstance(scalars, str) or not all(isinstance(n, str) for n in scalars):
            raise ConfigTypeError(f"scalars must be a sequence of names, not {scalars!r}")
        if not isinstance(quiet, bool):
            raise ConfigTypeError(f"quiet must be True or False, not {quiet!r}")
        if not isinstance(resume, (bool, int)) or (not isinstance(resume, bool) and resume < 0):
            raise ConfigError(f"resume must be True, False or a step number >= 0, not {resume!r}")
        if run_dir is not None and (not isinstance(run_dir, (str, os.PathLike))
                                    or str(run_dir) == ""):
            raise ConfigTypeError(f"run_dir must be a folder path or None, not {run_dir!r}")
        if run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise ConfigError(f"run_dir={str(run_dir)!r} exists and is not a folder")
        if record == "auto" and wav != "auto":
            record = None  # the recording comes by default with the per-run folder only
        if scalars and record is None:
            raise ConfigError("scalars are stored in the recording: pass record=... too")
        serve_at = None
        if serve is not None and serve is not False:
            from .server import parse_serve

            serve_at = parse_serve(serve)
            if record is None:
                raise ConfigError("serve= plays the run's recording in a browser: keep record= "
                                  "on (the default with wav='auto'), or pass record='run.gsr'")
        if resume and run_dir is None and "auto" in (wav, record):
            raise ConfigError(
                "resume=True continues the files of an earlier run: name them with "
                "run_dir='runs/my-job' (or explicit wav=/record= paths) in both runs")
        self._scalar_names = tuple(scalars)
        self._logged: dict[str, Any] = {}
        self._on_step = on_step  # the worker holds it weakly (see _weak_callable)
        self._rank = rank
        known = _process_rank()
        # Made before init_process_group by a launcher that sets no RANK: decided at the first
        # step (a rank that turns out silent then removes the files it made).
        self._rank_open = rank is not None and known is None and torch.distributed.is_available()
        if rank is not None and known is not None and known != rank:
            # Under torch.distributed, one rank sounds the run (gradients are identical on every
            # rank after DDP's all-reduce); the others do nothing at all: no thread, no file,
            # no hook, no collective.
            self.sinks = ()
            self._inert = True
            self._closed = False
            self._finalizer = lambda: None
            return
        folder = Path(run_dir) if run_dir is not None else None
        for what, path in (("wav", wav), ("record", record)):
            if path is not None and path != "auto":
                check_writable(path, what)
        if (wav not in (None, "auto") and record not in (None, "auto")
                and os.path.abspath(wav) == os.path.abspath(record)):
            raise ConfigError(f"wav and record are the same file ({str(wav)!r}); give the "
                              "recording its own path, e.g. run.gsr")
        made_folder: Path | None = None
        out: list[Sink] = []
        try:
            if "auto" in (wav, record):
                if folder is None:
                    folder = made_folder = new_run_folder()
                elif not folder.exists():
                    try:
                        folder.mkdir(parents=True)
                    except OSError as e:
                        raise ConfigError(f"run_dir={str(folder)!r} cannot be created: {e}") from e
                    made_folder = folder
            owner = f"the GradientSonifier created at {_caller()}"
            if wav is not None:
                wav_sink = WavSink(folder / "run.wav" if wav == "auto" else wav,
                                   format=wav_format, resume=resume)
                wav_sink.owner = owner
                out.append(wav_sink)
            if live is not False:
                out.append(LiveSink() if live is True else live)
            if record is not None:
                rec_sink = RecordSink(folder / "run.gsr" if record == "auto" else record,
                                      self._tap.layer_names, self.settings(),
                                      scalars=self._scalar_names, resume=resume)
                rec_sink.owner = owner
                out.append(rec_sink)
            out.extend(extra)
            self._made = [s.path for s in out if isinstance(s, (WavSink, RecordSink))
                          and not resume and not os.path.lexists(s.path)]
            self._made_folder = made_folder
            # Lock every file and check what is there before anything is truncated or written:
            # a constructor that raises leaves the disk as it was.
            for s in out:
                s.channels = self.synth.channels
                s.prepare(self.synth.sample_rate)
            if resume is not False:
                self._resume([s for s in out if isinstance(s, (WavSink, RecordSink))],
                             None if resume is True else int(resume))
            if serve_at is not None:  # bind the port before any file is written
                from .server import Server

                self.server = Server(rec_sink.path, *serve_at, check=False)
            for s in out:
                s.open(self.synth.sample_rate)
        except BaseException:
            if self.server is not None:
                self.server.close()
                self.server = None
            for s in out:
                try:
                    s.close()
                except Exception:  # the original error is the one to report
                    pass
            if made_folder is not None:
                try:
                    made_folder.rmdir()  # only if empty
                except OSError:
                    pass
            raise
        out = [s for s in out if not s.closed]  # e.g. live audio without a device: warned
        self.sinks = tuple(out)
        max_pending = min([max_pending] + [s.max_pending for s in out if s.max_pending])
        self._worker = _Worker(self.mapping, self.synth, out, on_step, max_pending,
                               self.accents, self.every)
        if self._warmup is not None and self._worker.detector is not None:
            self._worker.detector.mark(*self._warmup)  # a resumed run's recent history
        self._worker.start()
        self._closed = False
        # Drains the worker and finalises the files on close(), when the sonifier is garbage
        # collected, or at interpreter exit - so a script that never calls close() still ends
        # with a complete WAV.
        self._finalizer = weakref.finalize(self, _finish, self._worker, self._handles,
                                           self.server)
        if handle_sigterm:
            install_sigterm_exit()
        files = [p for s in self.sinks for p in ([s.path] if isinstance(s, (WavSink, RecordSink))
                                                 else [])]
        if files and not quiet:  # one line, like Lightning's log dir line
            where = (f"{folder}{os.sep} ({', '.join(p.name for p in files)})"
                     if folder is not None and all(p.parent == folder for p in files)
                     else ", ".join(str(p) for p in files))
            resumed = f", resumed at step {self._step}" if self._step else ""
            print(f"gradsonic: writing {where}{resumed}", file=sys.stderr, flush=True)
        if self.server is not None:
            self.server.start()
            if not quiet:
                print(f"gradsonic: hear and see this run at {self.server.url}", file=sys.stderr,
                      flush=True)

    # -- public surface ------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The sound settings, as stored in a recording (enough to re-render it)."""
        synth = self.synth
        return {"mapping": mapping_settings(self.mapping), "sample_rate": synth.sample_rate,
                "tone_duration": synth.tone_duration,
                "silence_duration": synth.silence_duration, "amplitude": synth.amplitude,
                "layout": synth.layout.value,
                "accents": self.accents.settings() if self.accents is not None else None,
                "every": self.every}

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the voices, in the order their tones play (see :mod:`gradsonic.voices`).

        With the default selection a voice is added when a parameter outside every voice gets
        trained (a layer unfrozen or added after attaching)."""
        return self._tap.layer_names

    @property
    def layer_params(self) -> tuple[tuple[str, ...], ...]:
        """For each voice, the names (as in ``model.named_parameters()``) of the parameters its
        norm covers: ``sqrt(sum of their squared gradient norms)``."""
        return tuple(self._tap.voice_params)

    def summary(self) -> str:
        """What is heard: each voice with its parameters and size, then every trainable
        parameter that is not heard and why (torchinfo-style text; ``print(son.summary())``)."""
        text = self._tap.summary()
        if self._step == 0 and not self._inert:
            how = NO_STEP.split(": ", 1)[1]
            text = (text.replace(" voices hear ", " voices will hear ", 1)
                    + f"\nno step heard yet: {how}")
        return text

    @property
    def steps(self) -> int:
        """Optimizer steps seen so far."""
        return self._step

    @property
    def stats(self) -> Stats:
        """Worker counters (steps rendered, alarms, silences); exact after :meth:`flush`."""
        return self._worker.stats if self._worker is not None else Stats()

    @property
    def active(self) -> bool:
        """False on the ranks of a distributed run that stay silent (see ``rank``)."""
        return not self._inert

    @property
    def closed(self) -> bool:
        return self._closed

    def wrap(self, optimizer: Any, scaler: torch.amp.GradScaler | None = None) -> Any:
        """Listen to every ``optimizer.step()``: the norms of the parameters it is about to update.

        Returns the same object (nothing is proxied); wrapping twice is a no-op. Wrappers that
        hold a torch optimizer - accelerate's ``AcceleratedOptimizer``, Lightning's
        ``LightningOptimizer``, anything with an ``optimizer``/``_optimizer`` attribute - are
        accepted: the optimizer inside is hooked. Every wrapped optimizer's step is one sound of
        the voices it updates (the others are silent in it).

        ``optimizer.step(closure)`` (LBFGS, Lightning) is heard right after the step's first
        closure evaluation: the gradient at the step's starting point, after anything the
        closure does (Lightning clips inside it). Without a closure, just before the update.

        With AMP, pass the ``GradScaler`` too: ``son.wrap(optimizer, scaler=scaler)``. The norms
        are then the *unscaled* ones (``scaler.step`` unscales before calling ``optimizer.step``),
        and a step the scaler skips because of inf/NaN gradients - where ``optimizer.step`` never
        runs - is still heard, as an alarm on every voice (``record.skipped``).
        """
        real = _torch_optimizer(optimizer)
        if scaler is not None and not callable(getattr(scaler, "step", None)):
            raise ConfigTypeError(
                f"scaler must be a torch.amp.GradScaler, not {type(scaler).__name__}")
        self._check_open()
        if self._inert and not self._tap.sharded:
            return optimizer
        if not any(isinstance(h, _Hook) and h.optimizer() is real for h in self._handles):
            self._handles.append(_Hook(self, real))
        if scaler is not None and not any(isinstance(h, _ScalerHook) and h.scaler() is scaler
                                          for h in self._handles):
            self._handles.append(_ScalerHook(scaler, self))
        return optimizer

    def detach(self) -> None:
        """Remove every hook this sonifier registered. :meth:`step` still works by hand."""
        handles = list(self._handles)
        self._handles.clear()  # the same list the finalizer holds
        for h in handles:
            h.remove()

    def step(self, optimizer: Any = None) -> None:
        """Read the current gradients' norms and queue their sound (call after ``backward()``).

        Without ``optimizer``: every parameter of the model that is in a voice (for loops that
        update parameters by hand). With one: the parameters that optimizer holds, as a wrapped
        optimizer's step would.
        """
        self._enqueue(None if optimizer is None else _torch_optimizer(optimizer), skipped=False)

    def _enqueue(self, optimizer: Any, skipped: bool, scale: torch.Tensor | None = None,
                 found_inf: torch.Tensor | None = None) -> None:
        self._check_open()
        if self._rank_open:
            self._settle_rank()
        if self._inert:
            if self._tap.sharded:  # silent, but the all-reduce needs every rank
                pending = self._tap.collect(self._step, optimizer, skipped, scale, found_inf)
                self._step += 1
                if self._last_pending is not None:
                    self._last_pending.wait()  # done by now: one step later
                self._last_pending = pending
            return
        worker = self._worker
        assert worker is not None
        pending = self._tap.collect(self._step, optimizer, skipped, scale, found_inf)
        if self._logged:
            pending.scalars, self._logged = self._logged, {}
        self._step += 1
        worker.any_step = True
        if worker.is_alive():  # a dead worker would never drain a full queue
            worker.queue.put(pending)
        elif not worker.errors:
            worker._fail("worker", RuntimeError("the gradsonic worker thread ended unexpectedly"))
        if len(worker.errors) > worker.reported:
            self._report()

    def _settle_rank(self) -> None:
        """The first step of a sonifier made before ``init_process_group``: a rank other than
        the chosen one goes silent and removes the (empty) files it made."""
        self._rank_open = False
        known = _process_rank()
        if known is None or known == self._rank or self._worker is None:
            return
        self._inert = True
        self._finalizer.detach()
        self._worker.caller_reports = True
        _stop(self._worker)
        if self.server is not None:
            self.server.close()
            self.server = None
        for path in self._made:
            for part in [path, *sorted(path.parent.glob(f"{path.stem}-[0-9][0-9][0-9]{path.suffix}"))]:
                try:
                    part.unlink()
                except OSError:
                    pass
        if self._made_folder is not None:
            try:
                self._made_folder.rmdir()
            except OSError:
                pass
        self.sinks = ()
        self._report()

    def flush(self) -> None:
        """Wait until every queued step is rendered and the sinks are flushed."""
        self._check_open()
        if self._inert:
            return
        self._command("flush")
        self._report()

    def log(self, **values: Any) -> None:
        """Store scalars (loss, learning rate, ...) with the next step in the recording.

        Names must be declared with ``GradientSonifier(record=..., scalars=("loss", ...))``.
        Values may be numbers or 0-d tensors (read on the worker thread, never synchronising the
        training thread). Call it before ``optimizer.step()`` to attach to that step.
        """
        unknown = set(values) - set(self._scalar_names)
        if unknown:
            raise ConfigError(f"log() got {sorted(unknown)}; declared scalars are "
                              f"{list(self._scalar_names)} (GradientSonifier(scalars=...))")
        for k, v in values.items():
            self._logged[k] = v.detach() if isinstance(v, torch.Tensor) else v

    def audio(self) -> Any:
        """An ``IPython.display.Audio`` of everything written to the WAV so far (notebooks)."""
        from .notebook import audio, load_audio

        wav = next((s for s in self.sinks if isinstance(s, WavSink)), None)
        if wav is None:
            raise ConfigError("audio() plays the WAV file: create the sonifier with wav=...")
        if not self._closed:
            self.flush()
        parts = [load_audio(p)[0] for p in wav.paths]
        return audio(np.concatenate(parts), self.synth.sample_rate)

    def close(self) -> None:
        """Detach, render every queued step, close the sinks. Safe to call again."""
        if self._closed:
            return
        self._closed = True
        if self._step == 0 and not self._inert:
            warnings.warn(NO_STEP, GradsonicWarning, stacklevel=2)
        try:
            self.detach()
            if self._last_pending is not None:
                self._last_pending.wait()
                self._last_pending = None
        finally:
            if self._worker is not None:
                self._worker.caller_reports = True
            self._finalizer()
            self._report()

    def __enter__(self) -> "GradientSonifier":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<GradientSonifier {state} layers={len(self.layer_names)} steps={self._step}>"

    # -- internals -----------------------------------------------------------------------

    def _resume(self, sinks: list[Sink], at: int | None) -> None:
        """Cut the WAV and the recording back to the steps both hold whole (and, with ``at``,
        to the steps before ``at``), and go on there."""
        wav = next((s for s in sinks if isinstance(s, WavSink)), None)
        rec_sink = next((s for s in sinks if isinstance(s, RecordSink)), None)
        rec = rec_sink.existing if rec_sink is not None else None
        names = self._tap.layer_names
        if rec is not None:
            names = self._tap.adopt_voices(rec.layer_names, rec.path)
            counts = rec.voice_counts
            steps = len(rec.steps)
        else:
            counts = None
            steps = None
        sizes = None  # frames each recorded step took in the WAV (0: not sounded, every=N)
        if rec is not None:
            sizes = (np.array([self.synth.step_samples(int(k)) for k in counts])
                     * rec.sounded(self.every))
        if wav is not None and wav.existing_frames is not None:
            if sizes is not None:
                ends = np.cumsum(sizes)
                whole = int(np.searchsorted(ends, wav.existing_frames, side="right"))
            else:  # no recording: sounded steps are steps 0, every, 2 * every, ...
                whole = wav.existing_frames // self.synth.step_samples(len(names)) * self.every
            steps = whole if steps is None else min(steps, whole)
        if not steps:
            steps = 0
        if at is not None:
            before = (int(np.searchsorted(rec.steps[:steps], at, side="left")) if rec is not None
                      else at)  # rows are in step order
            steps = min(steps, before)
        if wav is not None and wav.existing_frames is not None:
            frames = (int(sizes[:steps].sum()) if sizes is not None
                      else -(-steps // self.every) * self.synth.step_samples(len(names)))
            wav.resume_at(frames)
        if rec_sink is not None and rec is not None:
            rec_sink.resume_at(steps, names)
            if self.accents is not None:  # the accent detector's history, as it was
                lo = max(0, steps - self.accents.window)
                self._warmup = (rec.norms[lo:steps], rec.missing[lo:steps])
        if at is not None:
            self._step = at
        elif steps:
            self._step = int(rec.steps[steps - 1]) + 1 if rec is not None else steps

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this GradientSonifier is closed; create a new one to listen again")

    def _command(self, kind: str) -> None:
        assert self._worker is not None
        cmd = _Command(kind)
        self._worker.queue.put(cmd)
        while not cmd.done.wait(0.1):
            if not self._worker.is_alive():
                break

    def _report(self) -> None:
        """Warn once, on the calling (training) thread, for each new worker error."""
        if self._worker is None:
            return
        worker = self._worker
        while worker.reported < len(worker.errors):
            where, exc, tb = worker.errors[worker.reported]
            worker.reported += 1
            warnings.warn(f"gradsonic: {where} failed: {exc!r}; training continues.\n{tb}",
                          GradsonicWarning, stacklevel=3)


def _caller() -> str:
    """``file:line`` of the code that created the sonifier (for 'who writes this file')."""
    here = os.path.dirname(os.path.abspath(__file__))
    for frame in reversed(traceback.extract_stack()[:-1]):
        if not os.path.abspath(frame.filename).startswith(here):
            return f"{frame.filename}:{frame.lineno}"
    return "unknown"


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside ``optimizer`` (itself, or what a wrapper holds)."""
    obj = optimizer
    for _ in range(8):
        inner = None
        for attr in ("_optimizer", "optimizer", "original_optimizer"):
            candidate = getattr(obj, "__dict__", {}).get(attr)
            if isinstance(candidate, torch.optim.Optimizer) and candidate is not obj:
                inner = candidate
                break
        if inner is None:
            break
        obj = inner
    if isinstance(obj, torch.optim.Optimizer) and hasattr(obj, "_optimizer_step_pre_hooks"):
        return obj
    raise ConfigTypeError(
        "wrap() takes a torch.optim.Optimizer or a wrapper holding one in .optimizer, "
        "._optimizer or .original_optimizer (accelerate's AcceleratedOptimizer, Lightning's "
        f"LightningOptimizer, Opacus' DPOptimizer), not {type(optimizer).__name__}")


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` eagerly inside a ``torch.compile``'d optimizer step (dynamo cannot trace
    weak references, threads or NumPy): a graph break instead of a crash."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    if disable is None:
        try:
            from torch._dynamo import disable
        except ImportError:  # pragma: no cover - torch without dynamo
            return fn
    return disable(fn)


class _Hook:
    """The step hooks on one optimizer; hold the sonifier and the optimizer weakly.

    The norms are read in the step's *post*-hook: after every pre-hook (a later one that clips
    or adds noise is heard), after the wrappers' own changes, from the gradients the update
    used (torch's optimizers leave ``.grad`` as it was). Two steps are read earlier, by the
    pre-hook: ``step(closure)`` (LBFGS, Lightning) right after the closure's first evaluation,
    and a fused optimizer under a ``GradScaler`` (``grad_scale`` set on it: the gradients are
    still scaled, the step unscales inside its kernel), divided by that scale, with the
    scaler's ``found_inf`` as the skip flag.
    """

    __slots__ = ("pre", "post", "optimizer", "read")

    def __init__(self, son: "GradientSonifier", optimizer: torch.optim.Optimizer) -> None:
        son_ref = weakref.ref(son)
        self.optimizer = weakref.ref(optimizer)
        self.read = False  # this step's norms are queued already (closure or fused AMP)
        hook = self

        @_eager
        def pre(opt: torch.optim.Optimizer, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            hook.read = False
            son = son_ref()
            if son is None or son._closed:
                return None
            # torch passes the step's own arguments with the optimizer first: (self, closure?)
            closure = kwargs.get("closure")
            positional = closure is None and len(args) > 1 and callable(args[1])
            if positional:
                closure = args[1]
            if closure is None:
                scale = getattr(opt, "grad_scale", None)
                if isinstance(scale, torch.Tensor):
                    hook.read = True
                    son._enqueue(opt, False, scale, _found_inf(opt))
                return None
            wrapped = _FirstEvaluation(closure, son_ref, opt, hook)
            if positional:
                return (args[0], wrapped, *args[2:]), kwargs
            return args, {**kwargs, "closure": wrapped}

        @_eager
        def post(opt: torch.optim.Optimizer, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
            if hook.read:
                hook.read = False
                return
            son = son_ref()
            if son is not None and not son._closed:
                son._enqueue(opt, False, None, _found_inf(opt))

        self.pre = optimizer.register_step_pre_hook(pre)
        self.post = optimizer.register_step_post_hook(post)
        try:  # before post-hooks registered earlier (one that zeroes the gradients, say)
            optimizer._optimizer_step_post_hooks.move_to_end(self.post.id, last=False)
        except (AttributeError, KeyError):  # pragma: no cover - another torch layout
            pass

    def remove(self) -> None:
        self.pre.remove()
        self.post.remove()


def _found_inf(optimizer: Any) -> torch.Tensor | None:
    """A fused optimizer's skip flag under a ``GradScaler`` (set by ``scaler.step``)."""
    flag = getattr(optimizer, "found_inf", None)
    return flag if isinstance(flag, torch.Tensor) else None


class _FirstEvaluation:
    """A step's closure that queues the step's norms right after its first evaluation."""

    __slots__ = ("closure", "son_ref", "optimizer", "hook")

    def __init__(self, closure: Callable[[], Any], son_ref: "weakref.ref[GradientSonifier]",
                 optimizer: torch.optim.Optimizer, hook: _Hook) -> None:
        self.closure = closure
        self.son_ref = son_ref
        self.optimizer = optimizer
        self.hook = hook

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.closure(*args, **kwargs)
        if not self.hook.read:
            self.hook.read = True
            son = self.son_ref()
            if son is not None and not son._closed:
                son._enqueue(self.optimizer, skipped=False)
        return out


class _ScalerHook:
    """Shadows ``scaler.step`` on the instance to hear the steps the scaler skips.

    After the real ``scaler.step(optimizer)`` returns, if the optimizer's step hook did not fire
    (the scaler found inf/NaN and skipped the update), the sonifier reads the unscaled gradients
    and queues the step marked ``skipped``. Holds the scaler and the sonifier weakly.
    """

    __slots__ = ("scaler", "original", "__weakref__")

    def __init__(self, scaler: Any, son: "GradientSonifier") -> None:
        self.scaler = weakref.ref(scaler)
        self.original = scaler.step  # the bound method of the class
        son_ref = weakref.ref(son)
        original = self.original

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            sonifier = son_ref()
            before = sonifier.steps if sonifier is not None else 0
            out = original(optimizer, *args, **kwargs)
            sonifier = son_ref()
            if (sonifier is not None and not sonifier.closed and sonifier.steps == before
                    and scaler.is_enabled()):
                sonifier._enqueue(_torch_optimizer(optimizer), skipped=True)
            return out

        scaler.step = step

    def remove(self) -> None:
        scaler = self.scaler()
        if scaler is not None and "step" in vars(scaler):
            del scaler.step  # back to the class's method

"""GradientSonifier: attach to a model, hear every optimizer step.

A thin facade over the parts of the data flow, each of which checks its own options:

* what is heard: :class:`~gradsonic.tap.NormTap` (voices, plans, fused norms) and the optimizer
  hooks of :mod:`gradsonic.hooks`;
* how it sounds: :class:`~gradsonic.settings.SoundSettings` (mapping, synth, accents, every);
* where it goes: :class:`~gradsonic.outputs.Outputs` (run folder, WAV, recording, live audio,
  loggers, the page server; locks and resume);
* the pipeline: :class:`~gradsonic.pipeline.Worker`, the thread that renders and writes.

The training thread does one fused norm reduction and an O(1) enqueue per step.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from types import TracebackType
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ._signals import install_sigterm_exit
from .accents import Accents
from .errors import (ConfigError, ConfigTypeError, GradsonicError, GradsonicWarning, user_line,
                     user_stacklevel)
from .hooks import ScalerHook, StepHook, torch_optimizer
from .mapping import MappingLike
from .outputs import Outputs
from .recording import RecordSink
from .pipeline import NO_STEP, Command, Stats, Worker, finish, stop
from .settings import SoundSettings
from .sinks.base import Sink
from .sinks.live import LiveSink
from .sinks.wav import WavSink
from .tap import NormTap, PendingNorms, StepRecord

__all__ = ["GradientSonifier", "ClosedError", "Stats"]


class ClosedError(GradsonicError, RuntimeError):
    """The sonifier was used after close()."""


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


    _worker: Worker | None = None
    _inert = False
    _last_pending: PendingNorms | None = None
    _closed = True
    _handles: list[Any] = []
    _rank_open = False
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
        self.sound = SoundSettings.from_options(mapping, sample_rate, tone_duration,
                                                silence_duration, amplitude, layout, accents,
                                                every)
        self.mapping, self.synth = self.sound.mapping, self.sound.synth
        self.accents, self.every = self.sound.accents, self.sound.every
        self._tap = NormTap(model, layers, voices)
        self._outputs = Outputs(wav, record, run_dir, resume, wav_format, live, sinks, serve,
                                scalars)
        _check_options(on_step, max_pending, rank, handle_sigterm, quiet)
        self._handles = []
        self._step = 0
        self._scalar_names = tuple(scalars)
        self._logged: dict[str, Any] = {}
        self._on_step = on_step  # the worker holds it weakly (see pipeline.weak_callable)
        self._rank = rank
        known = _process_rank()
        # Made before init_process_group by a launcher that sets no RANK: decided at the first
        # step (a rank that turns out silent then removes the files it made).
        self._rank_open = rank is not None and known is None and torch.distributed.is_available()
        self._closed = False
        if rank is not None and known is not None and known != rank:
            # Under torch.distributed, one rank sounds the run (gradients are identical on every
            # rank after DDP's all-reduce); the others do nothing at all: no thread, no file,
            # no hook, no collective.
            self.sinks = ()
            self._inert = True
            self._finalizer = lambda: None
            return
        self._closed = True
        out = self._outputs.open(self._tap, self.sound, f"the GradientSonifier created at "
                                                        f"{user_line()}")
        self.sinks, self.server, self._step = tuple(out), self._outputs.server, \
            self._outputs.start_step
        max_pending = min([max_pending] + [s.max_pending for s in out if s.max_pending])
        self._worker = Worker(self.mapping, self.synth, list(out), on_step, max_pending,
                              self.accents, self.every)
        if self._outputs.warmup is not None and self._worker.detector is not None:
            self._worker.detector.mark(*self._outputs.warmup)  # a resumed run's recent history
        self._worker.prev = self._outputs.prev
        self._worker.start()
        self._closed = False
        # Drains the worker and finalises the files on close(), when the sonifier is garbage
        # collected, or at interpreter exit - so a script that never calls close() still ends
        # with a complete WAV.
        self._finalizer = weakref.finalize(self, finish, self._worker, self._handles,
                                           self.server)
        if handle_sigterm:
            install_sigterm_exit()
        self._announce(quiet)

    def _announce(self, quiet: bool) -> None:
        where = self._outputs.describe()
        if where is not None and not quiet:  # one line, like Lightning's log dir line
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
        return self.sound.as_dict()

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
        """Worker counters (steps rendered, alarms, silences), settled: reading them waits
        until every step queued so far is rendered (the sinks are not flushed)."""
        worker = self._worker
        if worker is None:
            return Stats()
        if not self._closed and not self._inert and worker.is_alive():
            self._command("drain")
        return worker.stats

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
        real = torch_optimizer(optimizer)
        if scaler is not None and not callable(getattr(scaler, "step", None)):
            raise ConfigTypeError(
                f"scaler must be a torch.amp.GradScaler, not {type(scaler).__name__}")
        self._check_open()
        if self._inert and not self._tap.sharded:
            return optimizer
        if not any(isinstance(h, StepHook) and h.optimizer() is real for h in self._handles):
            self._handles.append(StepHook(self, real))
            self._tap.plan(real)  # layer_params/summary() cover it before its first step
        if scaler is not None and not any(isinstance(h, ScalerHook) and h.scaler() is scaler
                                          for h in self._handles):
            self._handles.append(ScalerHook(scaler, self))
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
        self._enqueue(None if optimizer is None else torch_optimizer(optimizer), skipped=False)

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
        stop(self._worker)
        if self.server is not None:
            self.server.close()
            self.server = None
        self._outputs.remove_made()
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

    def widget(self) -> Any:
        """This run's live view in a notebook output: voices, norm plot, pitch strip and accents,
        following the run as it trains and playing it in the browser (:mod:`gradsonic.widget`;
        needs anywidget). It plays from the run's recording."""
        from .widget import RunWidget

        rec = next((s for s in self.sinks if isinstance(s, RecordSink)), None)
        if rec is None:
            raise ConfigError("widget() shows the run's recording: keep record= on (the default "
                              "with wav='auto'), or pass record='run.gsr'")
        sink = weakref.ref(rec)  # written to until it is closed, after the last row
        first = rec.paths[0]  # later parts (more voices) are followed from it
        return RunWidget(first, name=f"{first.parent.name}/{first.name}",
                         writing=lambda: (s := sink()) is not None and not s.closed)

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

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this GradientSonifier is closed; create a new one to listen again")

    def _command(self, kind: str) -> None:
        assert self._worker is not None
        cmd = Command(kind)
        self._worker.command(cmd)
        while not cmd.done.wait(0.1):
            if not self._worker.is_alive():
                break

    def _report(self) -> None:
        """Warn once, on the calling (training) thread, for each new worker error."""
        if self._worker is None:
            return
        while (text := self._worker.next_report("training continues.")) is not None:
            warnings.warn(text, GradsonicWarning, stacklevel=user_stacklevel())


def _check_options(on_step: Any, max_pending: Any, rank: Any, handle_sigterm: Any,
                   quiet: Any) -> None:
    """The facade's own options (the parts check theirs)."""
    if on_step is not None and not callable(on_step):
        raise ConfigTypeError(f"on_step must be a callable or None, not {on_step!r}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ConfigError(f"max_pending must be an integer >= 1, not {max_pending!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise ConfigError(f"rank must be a process rank (int >= 0) or None, not {rank!r}")
    if not isinstance(handle_sigterm, bool):
        raise ConfigTypeError(f"handle_sigterm must be True or False, not {handle_sigterm!r}")
    if not isinstance(quiet, bool):
        raise ConfigTypeError(f"quiet must be True or False, not {quiet!r}")


def _process_rank() -> int | None:
    """This process's rank under torch.distributed; before ``init_process_group``, the one a
    launcher gave it (torchrun, accelerate, DeepSpeed and Lightning set ``RANK``); else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = os.environ.get("RANK", "")
    return int(rank) if rank.isdigit() else None

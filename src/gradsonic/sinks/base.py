"""The sink interface: where rendered frames go.

A sink receives mono float32 frames in [-1, 1] from the sonifier's worker thread (never from the
training thread) and owns its resource. ``close()`` is idempotent and every sink is a context
manager. A sink that raises is reported once and dropped; the other sinks and training go on.
One that raises :class:`~gradsonic.errors.SinkPaused` (held up outside gradsonic, for now) is
reported and kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

import numpy as np


@dataclass(frozen=True)
class StepBlock:
    """What a block of frames holds: ``count`` whole steps of ``step_frames`` each.

    ``tone_frames`` is the length of one tone (tones start at multiples of it inside a step and
    begin and end at zero, so a step can be cut there without a click); ``times`` are the
    ``time.monotonic()`` instants of the optimizer steps; ``norms`` (float32), ``missing``
    (``[count, layers]``) and ``skipped`` (``[count]``) are what the steps were rendered from.
    """

    first_step: int
    count: int
    step_frames: int
    tone_frames: int
    times: np.ndarray
    norms: np.ndarray
    missing: np.ndarray
    skipped: np.ndarray
    scalars: list[dict[str, float]] | None = None  # son.log() values, one dict per step
    layer_names: tuple[str, ...] = ()  # the voices, in tone order (voices may be added later)
    accents: np.ndarray | None = None  # [count, layers] accent bits (gradsonic.accents)
    #: the step numbers, when they are not ``first_step + arange(count)`` (every=N sounds
    #: steps 0, N, 2N, ...)
    steps: np.ndarray | None = None

    @property
    def step_numbers(self) -> np.ndarray:
        if self.steps is not None:
            return self.steps
        return self.first_step + np.arange(self.count, dtype=np.int64)

    @staticmethod
    def merge(blocks: "list[StepBlock]") -> "StepBlock":
        """Consecutive blocks with the same voices as one block."""
        if len(blocks) == 1:
            return blocks[0]
        b0 = blocks[0]
        steps = (np.concatenate([b.step_numbers for b in blocks])
                 if any(b.steps is not None for b in blocks) else None)
        scalars = ([d for b in blocks for d in (b.scalars or [{}] * b.count)]
                   if any(b.scalars is not None for b in blocks) else None)

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(b, name) for b in blocks])

        return StepBlock(b0.first_step, sum(b.count for b in blocks), b0.step_frames,
                         b0.tone_frames, cat("times"), cat("norms"), cat("missing"),
                         cat("skipped"), scalars, b0.layer_names,
                         cat("accents") if b0.accents is not None else None, steps)


class Sink:
    """Base class; subclasses implement :meth:`write` and may override :meth:`flush`/:meth:`_close`."""

    closed: bool = True  # class-level so close() works after a failed __init__
    #: 1 (mono, the sequence layout) or 2 (stereo, the chord layout); set by the sonifier.
    channels: int = 1
    #: How long (seconds) frames may wait before reaching this sink. The worker batches steps
    #: for the smallest ``max_delay`` among its sinks: longer batches cost training less (each
    #: wake-up of the worker costs ~0.3 ms of CPU whatever it renders; benchmarks/RESULTS.md).
    #: Files and loggers take half a second; live audio asks for 20 ms.
    max_delay: float = 0.5

    def prepare(self, sample_rate: int) -> None:
        """Called first, for every sink, before any sink is opened: take locks, check what is
        there - and touch nothing, so that a failure leaves the disk as it was."""

    def open(self, sample_rate: int) -> None:
        """Called once by the sonifier before the first write, with its sample rate."""

    #: Steps the sonifier may queue ahead of this sink; a sink that paces training sets it low.
    max_pending: int | None = None
    #: False for sinks that store norms rather than audio (they get ``frames=None``, and keep
    #: working if synthesis fails).
    needs_frames: bool = True
    #: True for sinks that want every step's norms (:meth:`write_norms`) besides the frames of
    #: the sounded steps (loggers: scalars of every step, sound clips).
    wants_norms: bool = False

    def write_norms(self, block: StepBlock) -> None:
        """Every step's norms (``frames`` or not), before any synthesis; see :attr:`wants_norms`."""

    def write(self, frames: np.ndarray) -> None:
        raise NotImplementedError

    def write_steps(self, frames: np.ndarray | None, block: StepBlock) -> None:
        """Called by the worker with whole steps; sinks that care about steps override it."""
        self.write(frames)

    def flush(self) -> None:
        """Make what was written so far durable/visible. Default: nothing to do."""

    def close(self) -> None:
        """Release the resource. Safe to call any number of times."""
        if self.closed:
            return
        self.closed = True
        self._close()

    def _close(self) -> None:
        pass

    def __repr__(self) -> str:
        path = getattr(self, "path", None)  # file sinks name their file in every message
        return f"{type(self).__name__}({str(path)!r})" if path is not None else (
            f"{type(self).__name__}()")

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""What the experiment-tracker sinks (TensorBoard, W&B, MLflow) share: per-step scalars and clips.

Fed by the sonifier's worker like any sink, never on the training thread:

* **Scalars**, every step: each voice's norm as ``<prefix>/norm/<voice>`` (a voice with no
  gradient, or a NaN/Inf norm, has no point that step), ``<prefix>/alarms`` (voices with a
  NaN/Inf norm, all of them on a step the optimizer skipped) and ``<prefix>/accents`` (voices
  spiking or collapsing, :mod:`gradsonic.accents`). Handed to the tracker a worker block at a
  time (its batch API where it has one).
* **Clips** of the sound: the most recent ``clip_seconds`` (10 s) of it - whole steps, exactly the
  samples the WAV gets, never a step an earlier clip holds - every ``clip_interval`` seconds of
  the training's clock (300 s), or every ``clip_steps`` sounded steps if given; the first as soon
  as 10 s of sound exist, so a dashboard has sound within a minute of the start, and a last one -
  the final 10 s - at ``close()``. Clips are samples of the run, like a dashboard's images: with
  the wall-clock cadence most of the sound is in no clip (the WAV and the recording have it all;
  ``gradsonic export`` puts clips back to back). Only those 10 s are ever held. A clip is a float32 WAV (mono, or stereo for the chord layout) at the run's sample rate,
  logged at the step of its last tone.
"""

from __future__ import annotations

import importlib
import io
from collections import deque
from typing import Any
import numpy as np

from .._options import check_number
from ..errors import ConfigError
from .base import Sink, StepBlock

DEFAULT_CLIP_SECONDS = 10.0
DEFAULT_CLIP_INTERVAL = 300.0


class LoggerSink(Sink):
    """Base class: subclasses implement :meth:`_log_scalars` and :meth:`_log_clip`."""

    wants_norms = True
    needs_frames = True

    def __init__(self, *, prefix: str = "gradsonic", clip_seconds: float = DEFAULT_CLIP_SECONDS,
                 clip_interval: float = DEFAULT_CLIP_INTERVAL, clip_steps: int | None = None,
                 scalars: bool = True, audio: bool = True, step_offset: int = 0) -> None:
        if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
            raise ConfigError(f"prefix must be a tag prefix such as 'gradsonic', not {prefix!r}")
        self.prefix = prefix
        self.clip_seconds = check_number(clip_seconds, "clip_seconds", high=3600.0)
        self.clip_interval = check_number(clip_interval, "clip_interval (seconds)",
                                          allow_low=True)
        if clip_steps is not None and (isinstance(clip_steps, bool)
                                       or not isinstance(clip_steps, int) or clip_steps < 1):
            raise ConfigError(f"clip_steps must be an integer >= 1 or None, not {clip_steps!r}")
        self.clip_steps = clip_steps
        if isinstance(step_offset, bool) or not isinstance(step_offset, int):
            raise ConfigError(f"step_offset must be an integer, not {step_offset!r}")
        #: added to every step logged (the HF Trainer counts optimizer steps from 1)
        self.step_offset = step_offset
        self.scalars = bool(scalars)
        self.audio = bool(audio)
        self.sample_rate = 0
        self._ring: deque[tuple[int, np.ndarray]] = deque()  # (step, its frames), newest last
        self._ring_frames = 0
        self._since_clip = 0  # sounded steps since the last clip
        self._last_clip: float | None = None
        self.clips = 0  # clips logged
        self._pending: tuple | None = None  # scalars waiting for their block's frames
        self.closed = False

    def open(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    # -- scalars -----------------------------------------------------------------------------

    def write_norms(self, block: StepBlock) -> None:
        # Scalars are held until the frames of the same block have been seen, so that scalars
        # and clips reach the tracker in step order (W&B ignores a log to an earlier step).
        self._flush_scalars()
        if not self.scalars or not block.count:
            return
        norms = np.asarray(block.norms, dtype=np.float64)
        finite = np.isfinite(norms) & ~block.missing
        alarms = (~np.isfinite(norms) & ~block.missing).sum(axis=1)
        alarms = np.where(block.skipped, norms.shape[1], alarms)
        accents = ((block.accents > 0).sum(axis=1) if block.accents is not None
                   else np.zeros(block.count, np.int64))
        names = [f"{self.prefix}/norm/{n}" for n in block.layer_names] or [
            f"{self.prefix}/norm/{i}" for i in range(norms.shape[1])]
        self._pending = (block.step_numbers + self.step_offset, names,
                         np.where(finite, norms, np.nan), alarms, accents)
        if not self.audio:
            self._flush_scalars()

    def _flush_scalars(self, upto: int | None = None) -> None:
        """Log the held scalars of the steps up to ``upto`` (all: None)."""
        if self._pending is None:
            return
        steps, names, norms, alarms, accents = self._pending
        n = len(steps) if upto is None else int(np.searchsorted(steps, upto, side="right"))
        if n:
            self._log_scalars(steps[:n], names, norms[:n], alarms[:n], accents[:n])
        self._pending = None if n == len(steps) else (steps[n:], names, norms[n:], alarms[n:],
                                                      accents[n:])

    def _log_scalars(self, steps: np.ndarray, names: list[str], norms: np.ndarray,
                     alarms: np.ndarray, accents: np.ndarray) -> None:
        """Log ``norms[i, j]`` (NaN: no point) as ``names[j]`` at ``steps[i]``, and the counts
        as ``<prefix>/alarms`` and ``<prefix>/accents``."""
        raise NotImplementedError

    # -- clips -------------------------------------------------------------------------------

    def write(self, frames: np.ndarray) -> None:  # pragma: no cover - frames come via write_steps
        pass

    def write_steps(self, frames: np.ndarray | None, block: StepBlock) -> None:
        if not self.audio or frames is None or not block.count:
            return
        per_step = np.asarray(frames).reshape(block.count, block.step_frames, -1)
        limit = round(self.clip_seconds * self.sample_rate)
        for step, step_frames, t in zip((block.step_numbers + self.step_offset).tolist(),
                                        per_step, block.times.tolist()):
            self._ring.append((step, step_frames))
            self._ring_frames += len(step_frames)
            while len(self._ring) > 1 and self._ring_frames - len(self._ring[0][1]) >= limit:
                self._ring_frames -= len(self._ring.popleft()[1])  # at most clip_seconds
            self._since_clip += 1
            if self.clip_steps is not None:
                due = self._since_clip >= self.clip_steps
            elif self._last_clip is None:
                due = self._ring_frames >= limit  # the first 10 s of sound: show it at once
            else:  # the training's own clock (when the steps were taken)
                due = t - self._last_clip >= self.clip_interval
            if due:
                self._flush_scalars(step)
                self._emit()
                self._last_clip = t
        self._flush_scalars()

    def _emit(self) -> None:
        if not self._ring or not self._since_clip:
            return
        ring = list(self._ring)[-self._since_clip:]  # nothing a previous clip already holds
        frames = np.concatenate([f for _, f in ring])
        if frames.shape[1] == 1:
            frames = frames[:, 0]
        self._log_clip(ring[-1][0], ring[0][0], frames)
        self._since_clip = 0
        self.clips += 1

    def _log_clip(self, step: int, first_step: int, frames: np.ndarray) -> None:
        """Log ``frames`` (the sound of steps ``first_step`` .. ``step``) at ``step``."""
        raise NotImplementedError

    def wav_bytes(self, frames: np.ndarray) -> bytes:
        """``frames`` as a float32 WAV file (bit-exact; every browser plays it)."""
        import soundfile

        buf = io.BytesIO()
        soundfile.write(buf, frames, self.sample_rate, format="WAV", subtype="FLOAT")
        return buf.getvalue()

    def clip_name(self, step: int, first_step: int) -> str:
        return f"steps {first_step}-{step}"

    def flush(self) -> None:
        self._flush_scalars()

    def _close(self) -> None:
        try:
            if self._ring:
                self._flush_scalars(self._ring[-1][0])
            self._emit()  # what was played since the last clip
            self._flush_scalars()
        finally:
            self._ring.clear()
            self._finish()

    def _finish(self) -> None:
        """Flush (and close what this sink opened itself)."""


def optional(module: str, sink: str, extra: str) -> Any:
    """Import ``module`` for ``sink``, or raise ModuleNotFoundError naming the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModuleNotFoundError(f"{sink} needs {extra} ({e}): pip install "
                                  f"'gradsonic[{extra}]'") from e

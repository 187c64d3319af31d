"""Weights & Biases: norms in the run's history, clips as ``wandb.Audio``.

``wandb.init(...)`` then ``GradientSonifier(model, sinks=[WandbSink()])`` (the active run), or
``WandbSink(run)``. Needs ``pip install wandb``; works offline (``WANDB_MODE=offline``).

Every value is logged with ``gradsonic/step`` (the optimizer step), and W&B is told to plot the
``gradsonic/*`` charts against it (``define_metric``), so they line up with the training step. W&B
keeps *one* history: a row per W&B step, steps only ever increasing, a log to an earlier step
ignored - and the sonifier's worker writes a moment after the training thread. How gradsonic
shares that history with the rest of your logging is ``rows``:

``"shared"`` (default; safe with any other logging)
    Each optimizer step is its own row at that step while nothing else has moved the run's step
    past it. When something else has (it logs more often, or the worker is behind your own
    ``wandb.log(..., step=...)``), gradsonic writes the newest of its waiting steps into the
    current row - one value per row, like ``wandb.watch`` - and never moves the run's step, so
    no log of yours is ever dropped. Says so once on stderr. The recording has every step
    (``gradsonic export --wandb`` puts them all in a run of their own).
``"own"`` (every step, when the other logging does not pass ``step=``)
    Every optimizer step gets a row of its own, numbered by W&B as ``wandb.log(dict)`` without
    ``step=`` numbers rows (so nothing races the training thread's own logging); the other
    loggers' rows come in between. Lightning's ``WandbLogger`` and the HF Trainer's ``WandbCallback`` log
    that way (against their own ``trainer/global_step`` / ``train/global_step`` axes), so the
    trainer callbacks use ``"own"``. A script of yours that logs with ``step=`` would see its
    logs ignored once gradsonic's rows are ahead: keep ``"shared"`` there.

Clips are float32 WAV files (``wandb.Audio`` of an array would store 16-bit PCM), captioned with
their steps.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from ..errors import ConfigError
from .logger import LoggerSink, optional

ROWS = ("shared", "own")


def _wandb() -> Any:
    return optional("wandb", "WandbSink", "wandb")


class WandbSink(LoggerSink):
    """Log to a W&B run (default: the active one, ``wandb.run``); ``rows`` as in the module
    docstring. Keyword arguments as :class:`~gradsonic.sinks.logger.LoggerSink`."""

    def __init__(self, run: Any = None, rows: str = "shared", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _wandb()
        if rows not in ROWS:
            raise ConfigError(f"WandbSink rows must be one of {list(ROWS)}, not {rows!r}")
        self.rows = rows
        self._given = run
        self.run: Any = None
        self.path = None
        self._tmp: str | None = None
        #: steps not logged because another logger had moved the run's step past them
        #: (``rows="shared"``; the recording has them)
        self.skipped_steps = 0
        self._told = False

    def prepare(self, sample_rate: int) -> None:
        """Find the run before any file of the sonifier is written."""
        if self.run is None:
            self.run = self._given if self._given is not None else _wandb().run
        if self.run is None:
            raise ConfigError("WandbSink: no W&B run: call wandb.init(...) first, or pass "
                              "WandbSink(run)")

    def open(self, sample_rate: int) -> None:
        super().open(sample_rate)
        self.prepare(sample_rate)
        self.path = getattr(self.run, "dir", None)
        self.run.define_metric(f"{self.prefix}/step")
        self.run.define_metric(f"{self.prefix}/*", step_metric=f"{self.prefix}/step")
        self._tmp = tempfile.mkdtemp(prefix="gradsonic-wandb-")

    def _current(self) -> int:
        return int(getattr(self.run, "step", 0) or 0)

    def _log(self, row: dict[str, Any], step: int) -> None:
        """Log ``row`` of optimizer step ``step`` under the ``rows`` rule."""
        if self.rows == "own":  # a row of its own, numbered by W&B itself (no race with the
            self.run.log(row)    # training thread's logging: nothing compares steps)
            return
        current = self._current()
        if step >= current:
            at = step
        else:  # another logger is ahead: into its current row, never moving the run's step
            at = current
            if f"{self.prefix}/audio" in row:  # the caption names its steps; the row's
                row.pop(f"{self.prefix}/step")  # gradsonic/step belongs to the norms in it
            if not self._told:
                self._told = True
                print(f"gradsonic: WandbSink: something else moved this W&B run's step past the "
                      f"optimizer step ({current} > {step}); gradsonic now writes one value per "
                      "W&B row, like wandb.watch. For every step: WandbSink(rows='own') if your "
                      "other logging does not pass step=, or `gradsonic export --wandb` later.",
                      file=sys.stderr, flush=True)
        self.run.log(row, step=at)

    def _log_scalars(self, steps: np.ndarray, names: list[str], norms: np.ndarray,
                     alarms: np.ndarray, accents: np.ndarray) -> None:
        step_key = f"{self.prefix}/step"
        alarm_key, accent_key = f"{self.prefix}/alarms", f"{self.prefix}/accents"
        current = self._current()
        todo = steps.tolist()
        if self.rows == "shared" and todo and todo[0] < current:
            behind = int(np.searchsorted(steps, current))  # these would share one row:
            keep = max(behind - 1, 0)  # only the newest of them is written
            self.skipped_steps += keep
            todo = todo[keep:]
            first = keep
        else:
            first = 0
        for i, step in enumerate(todo, start=first):
            row = {name: x for name, x in zip(names, norms[i].tolist()) if x == x}
            row[alarm_key] = int(alarms[i])
            row[accent_key] = int(accents[i])
            row[step_key] = step
            self._log(row, step)

    def _log_clip(self, step: int, first_step: int, frames: np.ndarray) -> None:
        assert self._tmp is not None
        path = os.path.join(self._tmp, f"{self.prefix.replace('/', '-')}-{step}.wav")
        with open(path, "wb") as f:
            f.write(self.wav_bytes(frames))
        audio = _wandb().Audio(path, caption=self.clip_name(step, first_step))
        self._log({f"{self.prefix}/audio": audio, f"{self.prefix}/step": step}, step)

    def _finish(self) -> None:
        if self._tmp is not None:  # wandb copied each clip into the run's files at log()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

"""Weights & Biases: norms in the run's history, clips as ``wandb.Audio``.

``wandb.init(...)`` then ``GradientSonifier(model, sinks=[WandbSink()])`` (the active run), or
``WandbSink(run)``. Needs ``pip install wandb``; works offline (``WANDB_MODE=offline``).

The step axis: every value is logged with ``gradsonic/step`` (the optimizer step) and W&B is
told to plot the ``gradsonic/*`` charts against it (``define_metric``), so they line up with the
training step whatever else logs to the run. The history row is the optimizer step too - the
step Lightning's and the HF Trainer's loggers use - unless the run's own step is already past
it (something else logs more often than once per step): then the values join the current row
rather than being dropped, as W&B drops any log to an earlier step. Clips are float32 WAV files
(``wandb.Audio`` of an array would store 16-bit PCM), captioned with their steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np

from ..errors import ConfigError
from .logger import LoggerSink, optional


def _wandb() -> Any:
    return optional("wandb", "WandbSink", "wandb")


class WandbSink(LoggerSink):
    """Log to a W&B run (default: the active one, ``wandb.run``). Keyword arguments as
    :class:`~gradsonic.sinks.logger.LoggerSink`."""

    def __init__(self, run: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _wandb()
        self._given = run
        self.run: Any = None
        self.path = None
        self._tmp: str | None = None

    def open(self, sample_rate: int) -> None:
        super().open(sample_rate)
        wandb = _wandb()
        self.run = self._given if self._given is not None else wandb.run
        if self.run is None:
            raise ConfigError("WandbSink: no W&B run: call wandb.init(...) first, or pass "
                              "WandbSink(run)")
        self.path = getattr(self.run, "dir", None)
        self.run.define_metric(f"{self.prefix}/step")
        self.run.define_metric(f"{self.prefix}/*", step_metric=f"{self.prefix}/step")
        self._tmp = tempfile.mkdtemp(prefix="gradsonic-wandb-")

    def _row_step(self, step: int) -> int:
        current = getattr(self.run, "step", 0) or 0
        return max(step, current)

    def _log_scalars(self, steps: np.ndarray, names: list[str], norms: np.ndarray,
                     alarms: np.ndarray, accents: np.ndarray) -> None:
        step_key = f"{self.prefix}/step"
        alarm_key, accent_key = f"{self.prefix}/alarms", f"{self.prefix}/accents"
        for i, step in enumerate(steps.tolist()):
            row = {name: x for name, x in zip(names, norms[i].tolist()) if x == x}
            row[alarm_key] = int(alarms[i])
            row[accent_key] = int(accents[i])
            row[step_key] = step
            self.run.log(row, step=self._row_step(step))

    def _log_clip(self, step: int, first_step: int, frames: np.ndarray) -> None:
        wandb = _wandb()
        assert self._tmp is not None
        path = os.path.join(self._tmp, f"{self.prefix.replace('/', '-')}-{step}.wav")
        with open(path, "wb") as f:
            f.write(self.wav_bytes(frames))
        row: dict[str, Any] = {f"{self.prefix}/audio": wandb.Audio(
            path, caption=self.clip_name(step, first_step))}
        at = self._row_step(step)
        if at == step:  # (in a later row, its step would overwrite that row's)
            row[f"{self.prefix}/step"] = step
        self.run.log(row, step=at)

    def _finish(self) -> None:
        if self._tmp is not None:  # wandb copied each clip into the run's files at log()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

"""MLflow: norms as metrics, clips as WAV artifacts.

``mlflow.start_run()`` then ``GradientSonifier(model, sinks=[MLflowSink()])`` (the active run),
or ``MLflowSink(run_id=..., client=MlflowClient(...))``. Needs ``pip install mlflow``; works with
a local store (``sqlite:///mlflow.db`` or a ``file:`` store).

Metrics are sent with ``log_batch`` a worker block at a time (up to 1,000 per call), at the
optimizer step; clips are artifacts ``<prefix>/audio/step-<step>.wav`` (float32 WAV, the sound of
the steps before it, named in the artifact's folder listing by their last step).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from ..errors import ConfigError
from .logger import LoggerSink, optional

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def _mlflow() -> Any:
    return optional("mlflow", "MLflowSink", "mlflow")


class MLflowSink(LoggerSink):
    """Log to an MLflow run (default: the active one). Keyword arguments as
    :class:`~gradsonic.sinks.logger.LoggerSink`."""

    def __init__(self, run_id: str | None = None, client: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _mlflow()
        self.run_id = run_id
        self.client = client
        self.path = None
        self._tmp: str | None = None

    def prepare(self, sample_rate: int) -> None:
        """Find the run before any file of the sonifier is written."""
        mlflow = _mlflow()
        if self.run_id is None:
            run = mlflow.active_run()
            if run is None:
                raise ConfigError("MLflowSink: no MLflow run: call mlflow.start_run() first, or "
                                  "pass MLflowSink(run_id=...)")
            self.run_id = run.info.run_id
        if self.client is None:
            self.client = mlflow.tracking.MlflowClient()

    def open(self, sample_rate: int) -> None:
        super().open(sample_rate)
        self.prepare(sample_rate)
        self.path = self.client.get_run(self.run_id).info.artifact_uri
        self._tmp = tempfile.mkdtemp(prefix="gradsonic-mlflow-")

    def _log_scalars(self, steps: np.ndarray, names: list[str], norms: np.ndarray,
                     alarms: np.ndarray, accents: np.ndarray) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        alarm_key, accent_key = f"{self.prefix}/alarms", f"{self.prefix}/accents"
        metrics = []
        for i, step in enumerate(steps.tolist()):
            metrics.extend(Metric(name, x, ms, step)
                           for name, x in zip(names, norms[i].tolist()) if x == x)
            metrics.append(Metric(alarm_key, float(alarms[i]), ms, step))
            metrics.append(Metric(accent_key, float(accents[i]), ms, step))
        for lo in range(0, len(metrics), MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[lo:lo + MAX_BATCH])

    def _log_clip(self, step: int, first_step: int, frames: np.ndarray) -> None:
        assert self._tmp is not None
        path = os.path.join(self._tmp, f"step-{step:09d}.wav")
        with open(path, "wb") as f:
            f.write(self.wav_bytes(frames))
        self.client.log_artifact(self.run_id, path, artifact_path=f"{self.prefix}/audio")
        os.unlink(path)

    def _finish(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

"""PyTorch Lightning: ``Trainer(callbacks=[SonifierCallback(wav="run.wav")])``.

Needs ``pip install 'gradsonic[lightning]'``. At the start of ``fit`` the callback wraps the
trainer's optimizers (and the AMP precision plugin's ``GradScaler``), so each optimizer step is
heard exactly as it is applied: Lightning passes a closure that runs the training step, backward,
AMP unscaling and gradient clipping (``gradient_clip_val``); gradsonic reads the norms right after
the step's first closure evaluation - after clipping - once per optimizer step (gradient
accumulation gives one sound per step; LBFGS, which evaluates the closure many times, one). A step
the scaler skips (inf/NaN) is heard as an alarm. Only the global
rank 0 process makes sound and files (the callback runs on every rank so that sharded strategies'
norms can be all-reduced); the sonifier is closed at the end of ``fit`` and when training raises.

The trainer's own loggers get the norms and clips of the sound too (``log_to_loggers=False``
turns it off): a ``TensorBoardLogger`` in its version folder (a
:class:`~gradsonic.sinks.tensorboard.TensorBoardSink` on its ``SummaryWriter``), a
``WandbLogger`` in its run (a row per step: it logs without ``step=``, against its own
``trainer/global_step``), an ``MLFlowLogger`` in its run - at the optimizer step, which is
Lightning's ``global_step``.
"""

from __future__ import annotations

import os
from typing import Any

try:
    import lightning.pytorch as pl
except ModuleNotFoundError:  # the older standalone package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "gradsonic.lightning needs PyTorch Lightning: pip install 'gradsonic[lightning]'") from e

from .sonifier import GradientSonifier


class SonifierCallback(pl.Callback):
    """Listen to a Lightning run. Takes :class:`~gradsonic.GradientSonifier`'s arguments."""

    def __init__(self, wav: str | os.PathLike[str] | None = "auto", layers: Any = None,
                 mapping: Any = "log", log_to_loggers: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = dict(wav=wav, layers=layers, mapping=mapping, **kwargs)
        self.log_to_loggers = log_to_loggers
        self.sonifier: GradientSonifier | None = None

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.sonifier is None:  # on every rank: rank 0 sounds, the others stay silent
            kwargs = dict(self.kwargs)
            if self.log_to_loggers and trainer.global_rank == 0:
                kwargs["sinks"] = [*kwargs.get("sinks", ()), *logger_sinks(trainer.loggers)]
            self.sonifier = GradientSonifier(pl_module, **kwargs)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        for optimizer in trainer.optimizers:
            self.sonifier.wrap(optimizer, scaler=scaler)

    def _close(self) -> None:
        sonifier, self.sonifier = self.sonifier, None
        if sonifier is not None:
            sonifier.close()

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._close()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                     exception: BaseException) -> None:
        self._close()


def logger_sinks(loggers: list[Any]) -> list[Any]:
    """A sink for each logger gradsonic can write to (TensorBoard, W&B, MLflow)."""
    sinks: list[Any] = []
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "TensorBoardLogger":
            from .sinks.tensorboard import TensorBoardSink

            sinks.append(TensorBoardSink(logger.experiment))
        elif kind == "WandbLogger":
            from .sinks.wandb import WandbSink

            sinks.append(WandbSink(logger.experiment, rows="own"))  # it logs without step=
        elif kind == "MLFlowLogger":
            from .sinks.mlflow import MLflowSink

            sinks.append(MLflowSink(run_id=logger.run_id, client=logger.experiment))
    return sinks

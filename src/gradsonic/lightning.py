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
                 mapping: Any = "log", **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = dict(wav=wav, layers=layers, mapping=mapping, **kwargs)
        self.sonifier: GradientSonifier | None = None

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.sonifier is None:  # on every rank: rank 0 sounds, the others stay silent
            self.sonifier = GradientSonifier(pl_module, **self.kwargs)
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

"""PyTorch Lightning: ``Trainer(callbacks=[SonifierCallback(wav="run.wav")])``.

Needs ``pip install 'gradsonic[lightning]'``. Norms are read in ``on_before_optimizer_step``, which
Lightning calls once per optimizer step (so gradient accumulation gives one sound per step), after
the AMP precision plugin has unscaled the gradients and after gradient clipping. Only the global
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

    def __init__(self, wav: str | os.PathLike[str] | None = "run.wav", layers: Any = None,
                 mapping: Any = "log", **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = dict(wav=wav, layers=layers, mapping=mapping, **kwargs)
        self.sonifier: GradientSonifier | None = None

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.sonifier is None:  # on every rank: rank 0 sounds, the others stay silent
            self.sonifier = GradientSonifier(pl_module, **self.kwargs)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Any) -> None:
        if self.sonifier is not None:
            self.sonifier.step()

    def _close(self) -> None:
        sonifier, self.sonifier = self.sonifier, None
        if sonifier is not None:
            sonifier.close()

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._close()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                     exception: BaseException) -> None:
        self._close()

"""Hugging Face transformers: ``Trainer(..., callbacks=[SonifierCallback(wav="run.wav")])``.

Needs ``pip install 'gradsonic[transformers]'`` (transformers with the ``on_pre_optimizer_step``
event, 4.41 or newer). At ``on_train_begin`` the callback wraps the Trainer's optimizer (the torch
optimizer inside accelerate's ``AcceleratedOptimizer``, and its ``GradScaler`` under fp16), so the
norms are read just before each update is applied: once per optimizer step (one sound per step
under gradient accumulation), after gradient clipping; a step the scaler skips is an alarm. If no
optimizer is passed to the callback, ``on_pre_optimizer_step`` reads the model's gradients
instead. Only rank 0 makes sound and files (the callback runs on every rank so
that sharded models' norms can be all-reduced). The sonifier is closed at ``on_train_end``; if training raises, it is closed when the
process exits (or the callback is garbage collected).
"""

from __future__ import annotations

import os
from typing import Any

try:
    from transformers import TrainerCallback
except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "gradsonic.transformers needs transformers: pip install 'gradsonic[transformers]'") from e

from .sonifier import GradientSonifier

if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
    import transformers as _tf

    raise ImportError(f"gradsonic.transformers needs transformers >= 4.41 (the "
                      f"on_pre_optimizer_step event); this is {_tf.__version__}")


class SonifierCallback(TrainerCallback):
    """Listen to a ``transformers.Trainer`` run. Takes :class:`GradientSonifier`'s arguments."""

    def __init__(self, wav: str | os.PathLike[str] | None = "auto", layers: Any = None,
                 mapping: Any = "log", **kwargs: Any) -> None:
        self.kwargs = dict(wav=wav, layers=layers, mapping=mapping, **kwargs)
        self.sonifier: GradientSonifier | None = None
        self._wrapped = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if self.sonifier is None and model is not None:  # rank 0 sounds, the others are silent
            self.sonifier = GradientSonifier(model, **self.kwargs)
        if self.sonifier is not None and optimizer is not None:
            self.sonifier.wrap(optimizer, scaler=getattr(optimizer, "scaler", None))
            self._wrapped = True

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.sonifier is not None and not self._wrapped:
            self.sonifier.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        sonifier, self.sonifier, self._wrapped = self.sonifier, None, False
        if sonifier is not None:
            sonifier.close()

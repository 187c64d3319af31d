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

The ``report_to`` integrations get the norms and clips of the sound too (``log_to_loggers=False``
turns it off), at the Trainer's ``global_step`` (which counts optimizer steps from 1: the norms of
gradsonic's step 0 are logged at 1, beside ``train/grad_norm`` of the same update): TensorBoard
through the ``TensorBoardCallback``'s own ``SummaryWriter`` (so in its folder, next to
``train/loss``; that callback closes its writer at the end of training before this one is done,
and the sink closes the event file it then reopens), W&B in the active run (a row per step:
``WandbCallback`` logs without ``step=``), MLflow in the active run. The Trainer gives callbacks no handle on each other, so the TensorBoard writer is
found on the ``CallbackHandler`` that calls this callback (it calls the integrations first); if
that ever fails, TensorBoard is skipped with a warning rather than guessing a folder.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

try:
    from transformers import TrainerCallback
except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "gradsonic.transformers needs transformers: pip install 'gradsonic[transformers]'") from e

from .errors import GradsonicWarning
from .sonifier import GradientSonifier

if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
    import transformers as _tf

    raise ImportError(f"gradsonic.transformers needs transformers >= 4.41 (the "
                      f"on_pre_optimizer_step event); this is {_tf.__version__}")


class SonifierCallback(TrainerCallback):
    """Listen to a ``transformers.Trainer`` run. Takes :class:`GradientSonifier`'s arguments."""

    def __init__(self, wav: str | os.PathLike[str] | None = "auto", layers: Any = None,
                 mapping: Any = "log", log_to_loggers: bool = True, **kwargs: Any) -> None:
        self.kwargs = dict(wav=wav, layers=layers, mapping=mapping, **kwargs)
        self.log_to_loggers = log_to_loggers
        self.sonifier: GradientSonifier | None = None
        self._wrapped = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if self.sonifier is None and model is not None:  # rank 0 sounds, the others are silent
            options = dict(self.kwargs)
            if self.log_to_loggers and state.is_world_process_zero:
                options["sinks"] = [*options.get("sinks", ()),
                                    *report_to_sinks(args, _calling_handler())]
            self.sonifier = GradientSonifier(model, **options)
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


def _calling_handler() -> Any:
    """The ``CallbackHandler`` whose ``call_event`` is calling this callback, or None."""
    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)
    for _ in range(6):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler):
            return owner
        frame = frame.f_back
    return None


def report_to_sinks(args: Any, handler: Any) -> list[Any]:
    """A sink for each ``report_to`` integration gradsonic can write to."""
    report_to = getattr(args, "report_to", None) or []
    if isinstance(report_to, str):
        report_to = [report_to]
    sinks: list[Any] = []
    callbacks = {type(cb).__name__: cb for cb in getattr(handler, "callbacks", [])}
    if "tensorboard" in report_to or "all" in report_to:
        writer = getattr(callbacks.get("TensorBoardCallback"), "tb_writer", None)
        if writer is not None:
            from .sinks.tensorboard import TensorBoardSink

            sinks.append(TensorBoardSink(writer, step_offset=1))
        else:
            warnings.warn("gradsonic: report_to includes tensorboard but its SummaryWriter was "
                          "not found; pass sinks=[TensorBoardSink(dir)] to log there",
                          GradsonicWarning, stacklevel=3)
    if ("wandb" in report_to or "all" in report_to) and "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            from .sinks.wandb import WandbSink

            sinks.append(WandbSink(wandb.run, rows="own", step_offset=1))
    if ("mlflow" in report_to or "all" in report_to) and "mlflow" in sys.modules:
        import mlflow

        if mlflow.active_run() is not None:
            from .sinks.mlflow import MLflowSink

            sinks.append(MLflowSink(step_offset=1))
    return sinks

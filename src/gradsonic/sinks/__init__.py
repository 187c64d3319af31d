"""Where the audio goes: files, memory, the speakers (``LiveSink``, the ``live`` extra), and the
experiment trackers people already watch (TensorBoard, W&B, MLflow: their packages are imported
only when such a sink is made)."""

from .base import Sink, StepBlock
from .live import LivePolicy, LiveSink
from .memory import MemorySink
from .mlflow import MLflowSink
from .tensorboard import TensorBoardSink
from .wandb import WandbSink
from .wav import WavFormat, WavSink

__all__ = ["LivePolicy", "LiveSink", "MLflowSink", "MemorySink", "Sink", "StepBlock",
           "TensorBoardSink", "WandbSink", "WavFormat", "WavSink"]

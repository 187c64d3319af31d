"""Where the audio goes: files, memory, the speakers (``LiveSink``, the ``live`` extra)."""

from .base import Sink, StepBlock
from .live import LivePolicy, LiveSink
from .memory import MemorySink
from .wav import WavFormat, WavSink

__all__ = ["LivePolicy", "LiveSink", "MemorySink", "Sink", "StepBlock", "WavFormat", "WavSink"]

"""Where the audio goes: files, memory (and, with extras, the speakers)."""

from .base import Sink
from .memory import MemorySink
from .wav import WavFormat, WavSink

__all__ = ["MemorySink", "Sink", "WavFormat", "WavSink"]

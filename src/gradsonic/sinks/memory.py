"""A sink that keeps every frame in memory (tests, notebooks, short runs; grows with the run)."""

from __future__ import annotations

import numpy as np

from .base import Sink


class MemorySink(Sink):
    """Collects frames; :attr:`frames` returns them as one float32 array."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self.sample_rate: int | None = None
        self.closed = False

    def open(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def write(self, frames: np.ndarray) -> None:
        self._chunks.append(np.array(frames, dtype=np.float32, copy=True))

    @property
    def frames(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

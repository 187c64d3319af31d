"""TensorBoard: norms on the Scalars dashboard, the sound on the Audio dashboard.

``GradientSonifier(model, sinks=[TensorBoardSink("runs/x")])`` - or a ``SummaryWriter`` you
already have (Lightning's ``TensorBoardLogger.experiment``), which then gets a second stream of
events in its own folder. Needs ``pip install tensorboard`` (torch's ``SummaryWriter`` writes
the event files; TensorFlow is not needed).

Each step's scalars go in *one* event (a ``Summary`` with a value per voice): 6x faster and half
the file of one ``add_scalar`` per voice. Clips (:mod:`gradsonic.sinks.logger`) are audio
summaries under ``<prefix>/audio`` holding a float32 WAV - the exact samples, where torch's
``add_audio`` would cut them to 16 bits and mono.

Without TensorFlow, TensorBoard's event writer checksums every record with a pure-Python CRC32C:
~120 ms per MB, ~200 ms holding the interpreter lock for one 10 s clip. When ``google-crc32c``
is installed (``pip install 'gradsonic[tensorboard]'`` brings it) the sink hands the writer that
C implementation instead (:func:`fast_checksums`): the same bytes, ~150x faster.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..errors import ConfigTypeError
from .logger import LoggerSink, optional


def _summary_writer() -> Any:
    return optional("torch.utils.tensorboard", "TensorBoardSink", "tensorboard").SummaryWriter


def fast_checksums() -> bool:
    """Give TensorBoard's record writer a C CRC32C in place of its pure-Python one, when
    ``google-crc32c`` with its C extension is installed. True when the writer's checksum is fast.

    The records are unchanged (same CRC32C, same mask); only the time differs. This is process
    wide: the user's own ``SummaryWriter`` writes faster too."""
    try:
        import google_crc32c
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as stub
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    if record_writer.masked_crc32c is _masked_crc32c:
        return True
    if getattr(google_crc32c, "implementation", "") != "c" \
            or record_writer.masked_crc32c is not stub.masked_crc32c:
        return False  # no C extension, or someone else replaced it already: leave it alone
    record_writer.masked_crc32c = _masked_crc32c
    return True


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    x = google_crc32c.value(bytes(data))
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # TFRecord's mask


class TensorBoardSink(LoggerSink):
    """Log to a TensorBoard folder (``log_dir``) or to an existing ``SummaryWriter``.

    Keyword arguments as :class:`~gradsonic.sinks.logger.LoggerSink`: ``prefix`` of the tags
    (``"gradsonic"``), ``clip_seconds`` (10), ``clip_interval`` (300 s) or ``clip_steps``,
    ``scalars`` and ``audio`` (both on)."""

    def __init__(self, log_dir: str | os.PathLike[str] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._own = isinstance(log_dir, (str, os.PathLike))
        if not self._own and not callable(getattr(log_dir, "_get_file_writer", None)):
            raise ConfigTypeError(f"TensorBoardSink needs a log folder or a torch "
                                  f"SummaryWriter, not {type(log_dir).__name__}")
        self.path = None
        self._target = log_dir
        self.writer: Any = None
        self._reopened = False  # its owner closed the writer before this sink was done
        if self._own:
            _summary_writer()  # a missing package is an error now, not in the worker

    def open(self, sample_rate: int) -> None:
        super().open(sample_rate)
        fast_checksums()
        if self._own:
            self.writer = _summary_writer()(log_dir=str(self._target))
        else:
            self.writer = self._target
        self.path = self.writer.log_dir
        self.closed = False

    def _log_scalars(self, steps: np.ndarray, names: list[str], norms: np.ndarray,
                     alarms: np.ndarray, accents: np.ndarray) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        writer = self._file_writer()
        alarm_tag, accent_tag = f"{self.prefix}/alarms", f"{self.prefix}/accents"
        wall = time.time()
        for i, step in enumerate(steps.tolist()):
            values = [Summary.Value(tag=name, simple_value=x)
                      for name, x in zip(names, norms[i].tolist()) if x == x]
            values.append(Summary.Value(tag=alarm_tag, simple_value=float(alarms[i])))
            values.append(Summary.Value(tag=accent_tag, simple_value=float(accents[i])))
            writer.add_summary(Summary(value=values), step, wall)

    def _log_clip(self, step: int, first_step: int, frames: np.ndarray) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        audio = Summary.Audio(sample_rate=self.sample_rate,
                              num_channels=1 if frames.ndim == 1 else frames.shape[1],
                              length_frames=frames.shape[0],
                              encoded_audio_string=self.wav_bytes(frames),
                              content_type="audio/wav")
        summary = Summary(value=[Summary.Value(tag=f"{self.prefix}/audio", audio=audio)])
        self._file_writer().add_summary(summary, step, time.time())

    def _file_writer(self) -> Any:
        # A SummaryWriter closed by its owner (the HF Trainer's TensorBoardCallback closes its
        # writer at on_train_end, before this sink has written the last steps) reopens a new
        # event file when written to; this sink then closes it when done.
        if getattr(self.writer, "all_writers", True) is None:
            self._reopened = True
        return self.writer._get_file_writer()

    def flush(self) -> None:
        super().flush()
        if self.writer is not None:
            self.writer.flush()

    def _finish(self) -> None:
        if self.writer is None:
            return
        if self._own or self._reopened:
            self.writer.close()
        else:
            self.writer.flush()

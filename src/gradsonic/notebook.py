"""Hear a run inline in Jupyter.

``show("run.gsr")``: the run's view (plot, pitch strip, voices, sound synthesised in the browser)
as a widget that follows the recording while it grows - ``son.widget()`` does the same for the
run being trained (:mod:`gradsonic.widget`, needs anywidget). ``play(path)`` and ``son.audio()``:
an ``IPython.display.Audio`` of the rendered sound (the browser plays it). Needs IPython;
imported only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def load_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Frames and sample rate of an audio file, or of a recording rendered as recorded."""
    p = Path(path)
    with open(p, "rb") as f:
        is_recording = f.read(5) == b"GSREC"
    if is_recording:
        from .recording import read_recording
        from .render import frames, synth_for

        rec = read_recording(p)
        synth, _ = synth_for(rec)
        chunks = list(frames(rec))
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), synth.sample_rate
    import soundfile

    data, rate = soundfile.read(str(p), dtype="float32", always_2d=False)
    return data, rate


def audio(frames: np.ndarray, sample_rate: int) -> Any:
    try:
        from IPython.display import Audio
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("notebook playback needs IPython: pip install ipython") from e
    data = np.asarray(frames, dtype=np.float32)
    if data.ndim == 2:  # [frames, channels] -> IPython's [channels, frames]
        data = data.T
    return Audio(data, rate=sample_rate, normalize=False)


def play(path: str | os.PathLike[str]) -> Any:
    """An ``IPython.display.Audio`` of a WAV/FLAC/OGG file or a gradsonic recording."""
    return audio(*load_audio(path))


def show(path: str | os.PathLike[str]) -> Any:
    """A widget showing and playing a recording (``.gsr``), following it while another process
    writes it (see :mod:`gradsonic.widget`)."""
    from .widget import RunWidget

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"show() opens a gradsonic recording (.gsr): no file at {str(p)!r}")

    return RunWidget(p, name=f"{p.parent.name}/{p.name}")

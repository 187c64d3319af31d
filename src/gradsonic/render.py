"""Re-render a recording: the same tones the live run made, or the same run with other settings."""

from __future__ import annotations

import fnmatch
import os
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ConfigError
from .accents import AccentDetector, resolve_accents
from .mapping import mapping_from_settings, plan_tones, resolve_mapping
from .recording import Recording
from .synth import Synth

CHUNK_STEPS = 512


def _columns(recording: Recording, layers: list[str] | None) -> list[int]:
    cols = list(range(len(recording.layer_names)))
    if layers:
        cols = [i for i, n in enumerate(recording.layer_names)
                if any(fnmatch.fnmatchcase(n, pat) for pat in layers)]
        if not cols:
            raise ConfigError(f"--layers {layers!r} match none of {list(recording.layer_names)}")
    return cols


def select(recording: Recording, layers: list[str] | None = None,
           steps: slice | None = None) -> tuple[np.ndarray, ...]:
    """Norms, missing and skipped restricted to ``layers`` (glob patterns) and a step slice."""
    cols = _columns(recording, layers)
    rows = steps if steps is not None else slice(None)
    return (recording.norms[rows][:, cols], recording.missing[rows][:, cols],
            recording.skipped[rows], [recording.layer_names[i] for i in cols])


def _runs(counts: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of equal voice counts."""
    edges = np.flatnonzero(np.diff(counts)) + 1
    bounds = [0, *edges.tolist(), len(counts)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            yield lo, hi


def synth_for(recording: Recording, **overrides: Any) -> tuple[Synth, Callable]:
    """The synth and mapping of the recorded run, with any setting overridden."""
    return synth_from_settings(recording.settings, **overrides)


def synth_from_settings(s: dict[str, Any], **overrides: Any) -> tuple[Synth, Callable]:
    """The synth and mapping of a recording's settings, with any setting overridden."""
    mapping = overrides.pop("mapping", None)
    mapping = resolve_mapping(mapping) if mapping is not None else mapping_from_settings(
        s.get("mapping", {"kind": "log"}))
    kw = {k: s.get(k) for k in ("sample_rate", "tone_duration", "silence_duration", "amplitude",
                                "layout")}
    if (overrides.get("tone_duration") is not None and s.get("tone_duration")
            and s.get("silence_duration") == 2 * s["tone_duration"]):
        kw["silence_duration"] = None  # the default silence (two tones) follows the new tone
    kw.update({k: v for k, v in overrides.items() if v is not None})
    kw = {k: v for k, v in kw.items() if v is not None}
    return Synth(**kw), mapping


def accent_marks(recording: Recording) -> np.ndarray:
    """The accent marks of every recorded step, rebuilt as the live run made them."""
    rule = resolve_accents(recording.settings.get("accents"))
    marks = np.zeros(recording.norms.shape, dtype=np.uint8)
    if rule is not None:
        detector = AccentDetector(rule)
        for lo in range(0, len(recording.steps), CHUNK_STEPS):
            hi = lo + CHUNK_STEPS
            marks[lo:hi] = detector.mark(recording.norms[lo:hi], recording.missing[lo:hi])
    return marks


def frames(recording: Recording, layers: list[str] | None = None, steps: slice | None = None,
           every: int | None = None, **overrides: Any) -> Iterator[np.ndarray]:
    """Rendered frames in chunks of ``CHUNK_STEPS`` steps (constant memory for long runs).

    As the live run: accents rebuilt from the norms, every Nth step (``every``, default the
    recorded one)."""
    for _, chunk in chunks(recording, layers, steps, every, **overrides):
        yield chunk


def chunks(recording: Recording, layers: list[str] | None = None, steps: slice | None = None,
           every: int | None = None, **overrides: Any) -> Iterator[tuple[int, np.ndarray]]:
    """``(recorded steps covered, frames)`` per chunk: :func:`frames` with progress."""
    norms, missing, skipped, _ = select(recording, layers, steps)
    rows = steps if steps is not None else slice(None)
    cols = np.asarray(_columns(recording, layers))
    marks = accent_marks(recording)[rows][:, cols]
    assert recording.voice_counts is not None
    counts = recording.voice_counts[rows]
    every = every or int(recording.settings.get("every") or 1)
    sounded = recording.steps[rows] % every == 0
    synth, mapping = synth_for(recording, **overrides)
    for start, stop in _runs(counts):  # voices added mid-run: each stretch with its own voices
        keep = cols < counts[start]
        for lo in range(start, stop, CHUNK_STEPS):
            hi = min(lo + CHUNK_STEPS, stop)
            idx = np.arange(lo, hi)[sounded[lo:hi]]
            if not len(idx):
                yield hi - lo, np.zeros(0, dtype=np.float32)
                continue
            freqs, kinds = plan_tones(mapping, norms[idx][:, keep], missing[idx][:, keep],
                                      skipped[idx])
            yield hi - lo, synth.render(freqs, kinds, marks[idx][:, keep])


def render_to_file(recording: Recording, out: str | os.PathLike[str], fmt: str = "wav",
                   progress: Callable[[int], Any] | None = None, **kwargs: Any) -> int:
    """Write the rendering to ``out`` (wav via gradsonic's writer, flac/ogg via soundfile)."""
    synth, _ = synth_for(recording, **{k: v for k, v in kwargs.items()
                                       if k not in ("layers", "steps")})
    total = 0
    if fmt == "wav":
        from .sinks.wav import WavSink

        sink: Any = WavSink(out)
        sink.channels = synth.channels
        sink.open(synth.sample_rate)
        write = sink.write
    else:
        import soundfile

        sink = soundfile.SoundFile(str(out), "w", synth.sample_rate, synth.channels,
                                   format=fmt.upper(), subtype=None)
        write = sink.write
    try:
        for n_steps, chunk in chunks(recording, **kwargs):
            write(chunk)
            total += chunk.size
            if progress is not None:
                progress(n_steps)
    finally:
        sink.close()
    return total

"""Re-render a recording: the same tones the live run made, or the same run with other settings."""

from __future__ import annotations

import fnmatch
import os
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ConfigError
from .mapping import mapping_from_settings, plan_tones, resolve_mapping
from .recording import Recording
from .sinks.base import Sink, StepBlock
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
    for block, _, chunk in blocks(recording, layers, steps, every, **overrides):
        yield block.count, chunk


def blocks(recording: Recording, layers: list[str] | None = None, steps: slice | None = None,
           every: int | None = None, **overrides: Any
           ) -> Iterator[tuple[StepBlock, StepBlock | None, np.ndarray]]:
    """The run as the live worker saw it, ``CHUNK_STEPS`` steps at a time: ``(every step's
    block, the sounded steps' block or None, their frames)`` - what sinks are fed."""
    norms, missing, skipped, _ = select(recording, layers, steps)
    rows = steps if steps is not None else slice(None)
    cols = np.asarray(_columns(recording, layers))
    names = [recording.layer_names[c] for c in cols]
    marks = recording.accents[rows][:, cols]
    assert recording.voice_counts is not None
    counts = recording.voice_counts[rows]
    numbers = recording.steps[rows]
    heard_all = recording.sounded(every)
    heard_rows = heard_all[rows]
    everywhere = np.arange(len(recording.steps))
    all_rows = everywhere[rows]  # each selected row's index in the run
    last_heard = np.maximum.accumulate(np.where(heard_all, everywhere, -1)) if len(everywhere) \
        else everywhere  # the last sounded row at or before each row
    synth, mapping = synth_for(recording, **overrides)
    for start, stop in _runs(counts):  # voices added mid-run: each stretch with its own voices
        keep = cols < counts[start]
        voices = tuple(n for n, k in zip(names, keep) if k)
        step_frames = synth.step_samples(len(voices))
        for lo in range(start, stop, CHUNK_STEPS):
            hi = min(lo + CHUNK_STEPS, stop)
            n = hi - lo
            every_step = StepBlock(int(numbers[lo]), n, step_frames, synth.tone_samples,
                                   np.zeros(n), norms[lo:hi][:, keep], missing[lo:hi][:, keep],
                                   skipped[lo:hi], None, voices, marks[lo:hi][:, keep],
                                   numbers[lo:hi])
            idx = np.arange(lo, hi)[heard_rows[lo:hi]]
            if not len(idx):
                yield every_step, None, np.zeros((0, 2) if synth.channels == 2 else 0, np.float32)
                continue
            freqs, kinds = plan_tones(mapping, norms[idx][:, keep], missing[idx][:, keep],
                                      skipped[idx])
            first = all_rows[idx[0]]
            prev = _previous(recording, mapping, int(last_heard[first - 1]) if first else -1,
                             cols[keep])
            heard = StepBlock(int(numbers[idx[0]]), len(idx), step_frames, synth.tone_samples,
                              np.zeros(len(idx)), norms[idx][:, keep], missing[idx][:, keep],
                              skipped[idx], None, voices, marks[idx][:, keep], numbers[idx])
            yield every_step, heard, synth.render(freqs, kinds, marks[idx][:, keep], prev)


def _previous(recording: Recording, mapping: Callable, k: int, cols: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """The tones of sounded row ``k`` (-1: none), over columns ``cols``: what the ambient
    layout glides from into the next sounded row, as in the live run."""
    if k < 0:
        return None
    freqs, kinds = plan_tones(mapping, recording.norms[k:k + 1][:, cols],
                              recording.missing[k:k + 1][:, cols], recording.skipped[k:k + 1])
    return freqs[0], kinds[0]


def replay(recording: Recording, sinks: list[Sink],
           progress: Callable[[int], Any] | None = None) -> None:
    """Feed a finished run to sinks as the live worker fed them (``gradsonic export``); the
    sinks must be opened with the run's sample rate first. The clock is the step: a sink
    timing anything by wall time sees every step at once."""
    for every_step, heard, chunk in blocks(recording):
        for sink in sinks:
            if not sink.needs_frames:
                sink.write_steps(None, every_step)
            if sink.wants_norms:
                sink.write_norms(every_step)
            if sink.needs_frames and heard is not None:
                sink.write_steps(chunk, heard)
        if progress is not None:
            progress(every_step.count)


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

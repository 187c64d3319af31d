"""Re-render a recording: the same tones the live run made, or the same run with other settings."""

from __future__ import annotations

import fnmatch
import os
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ConfigError
from .mapping import mapping_from_settings, plan_tones, resolve_mapping
from .recording import Recording
from .synth import Synth

CHUNK_STEPS = 512


def select(recording: Recording, layers: list[str] | None = None,
           steps: slice | None = None) -> tuple[np.ndarray, ...]:
    """Norms, missing and skipped restricted to ``layers`` (glob patterns) and a step slice."""
    cols = list(range(len(recording.layer_names)))
    if layers:
        cols = [i for i, n in enumerate(recording.layer_names)
                if any(fnmatch.fnmatchcase(n, pat) for pat in layers)]
        if not cols:
            raise ConfigError(f"--layers {layers!r} match none of {list(recording.layer_names)}")
    rows = steps if steps is not None else slice(None)
    return (recording.norms[rows][:, cols], recording.missing[rows][:, cols],
            recording.skipped[rows], [recording.layer_names[i] for i in cols])


def synth_for(recording: Recording, **overrides: Any) -> tuple[Synth, Callable]:
    """The synth and mapping of the recorded run, with any setting overridden."""
    s = recording.settings
    mapping = overrides.pop("mapping", None)
    mapping = resolve_mapping(mapping) if mapping is not None else mapping_from_settings(
        s.get("mapping", {"kind": "log"}))
    kw = {k: s.get(k) for k in ("sample_rate", "tone_duration", "silence_duration", "amplitude")}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    kw = {k: v for k, v in kw.items() if v is not None}
    return Synth(**kw), mapping


def frames(recording: Recording, layers: list[str] | None = None, steps: slice | None = None,
           **overrides: Any) -> Iterator[np.ndarray]:
    """Rendered frames in chunks of ``CHUNK_STEPS`` steps (constant memory for long runs)."""
    norms, missing, skipped, _ = select(recording, layers, steps)
    synth, mapping = synth_for(recording, **overrides)
    for lo in range(0, len(norms), CHUNK_STEPS):
        hi = lo + CHUNK_STEPS
        freqs, kinds = plan_tones(mapping, norms[lo:hi], missing[lo:hi], skipped[lo:hi])
        yield synth.render(freqs, kinds)


def render_to_file(recording: Recording, out: str | os.PathLike[str], fmt: str = "wav",
                   progress: Callable[[int], Any] | None = None, **kwargs: Any) -> int:
    """Write the rendering to ``out`` (wav via gradsonic's writer, flac/ogg via soundfile)."""
    synth, _ = synth_for(recording, **{k: v for k, v in kwargs.items()
                                       if k not in ("layers", "steps")})
    total = 0
    if fmt == "wav":
        from .sinks.wav import WavSink

        sink: Any = WavSink(out)
        sink.open(synth.sample_rate)
        write = sink.write
    else:
        import soundfile

        sink = soundfile.SoundFile(str(out), "w", synth.sample_rate, 1,
                                   format=fmt.upper(), subtype=None)
        write = sink.write
    try:
        for chunk in frames(recording, **kwargs):
            write(chunk)
            total += chunk.size
            if progress is not None:
                progress(1)
    finally:
        sink.close()
    return total

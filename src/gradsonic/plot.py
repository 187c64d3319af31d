"""``gradsonic plot``: per-layer norm curves above a spectrogram of the sound, on one step axis.

Needs matplotlib (``pip install 'gradsonic[plot]'``); imported only here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .recording import Recording
from .render import frames as render_frames
from .render import select, synth_for


def plot_recording(recording: Recording, out: str | os.PathLike[str], layers: Any = None,
                   dpi: int = 110,
                   steps: slice | None = None, **overrides: Any) -> None:
    """Write a PNG: log-scale norms per layer (non-finite steps marked) over the spectrogram."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("gradsonic plot needs matplotlib: "
                                  "pip install 'gradsonic[plot]'") from e
    norms, missing, skipped, names = select(recording, layers, steps)
    step_ids = recording.steps[steps if steps is not None else slice(None)]
    synth, mapping = synth_for(recording, **overrides)
    audio = np.concatenate(list(render_frames(recording, layers=layers, steps=steps, **overrides))
                           or [np.zeros(1, np.float32)])
    step_seconds = synth.step_samples(len(names)) / synth.sample_rate

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.2]})
    shown = np.where(np.isfinite(norms) & (norms > 0), norms, np.nan)
    for i, name in enumerate(names):
        top.plot(step_ids, shown[:, i], lw=1.2, label=name)
    top.set_yscale("log")
    top.set_ylabel("gradient norm")
    bad = (~np.isfinite(norms) & ~missing).any(axis=1) | skipped
    if bad.any():
        for s in step_ids[bad]:
            top.axvspan(s - 0.5, s + 0.5, color="red", alpha=0.25, lw=0)
        top.plot([], [], color="red", alpha=0.4, lw=6, label="NaN/Inf (alarm)")
    top.legend(loc="upper left", fontsize=8, ncol=min(len(names) + 1, 6))
    top.set_title(f"{recording.path.name}: {len(step_ids)} steps, {len(names)} layers")
    top.grid(True, which="major", alpha=0.3)

    first = step_ids[0] if len(step_ids) else 0
    from matplotlib import mlab

    nfft = synth.tone_samples  # one tone per window: each layer's pitch stands alone
    power, freqs, t = mlab.specgram(audio, NFFT=nfft, Fs=synth.sample_rate,
                                    noverlap=nfft // 2, pad_to=max(2048, nfft), mode="psd")
    finite = np.isfinite(norms) & ~missing
    highest = float(synth.clamp(mapping(np.abs(norms[finite]))).max()) if finite.any() else 0.0
    top_hz = min(synth.max_hz, max(4000.0, 1.1 * highest))  # room for the highest tone
    keep = freqs <= top_hz
    db = 10 * np.log10(np.maximum(power[keep], 1e-14))
    x = first + t / step_seconds  # seconds -> optimizer steps
    bottom.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80,
                  vmax=db.max(), extent=(x[0] if len(x) else first, x[-1] if len(x) else first + 1,
                                         0, freqs[keep][-1]))
    bottom.set_ylabel("frequency (Hz)")
    bottom.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)

"""``gradsonic plot``: per-voice norm curves above a pitch strip of exactly what was played.

Needs matplotlib (``pip install 'gradsonic[plot]'``); imported only here.

* Top: each voice's gradient norm on a log scale. A zero norm (a dead voice) cannot sit on a log
  axis: it is a downward triangle on the panel's floor. Spike accents are upward triangles, collapse
  accents downward ones on the curve; NaN/Inf steps (the alarm) are shaded red. The legend stands
  outside the data, on the right.
* Bottom: the pitch strip, voices x steps: colour = the pitch played (log Hz), white = silent (no
  gradient), red = the alarm, black dots = over-range (played at the band's edge with the buzzy
  timbre), white triangles = accents.

Long runs are decimated into at most ``max_columns`` step bins, never by dropping steps: the
curves become min-max envelopes, a bin's strip cell shows its highest pitch, and a bin holding
any alarm, over-range tone or accent shows it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .mapping import ALARM, OVER, SILENT, plan_tones
from .recording import Recording
from .render import select, synth_for


def _bins(n: int, max_columns: int) -> np.ndarray:
    """Start index of each step bin (one step per bin when the run is short)."""
    size = max(1, -(-n // max_columns))
    return np.arange(0, n, size)


def decimate(recording: Recording, layers: Any = None, steps: slice | None = None,
             max_columns: int = 1500, **overrides: Any) -> dict[str, Any]:
    """What the plot shows, per step bin and voice: norm envelopes (``lo``, ``hi``), dead voices,
    accents, alarms, over-range tones, silence and the highest pitch played."""
    norms, missing, skipped, names = select(recording, layers, steps)
    rows = steps if steps is not None else slice(None)
    step_ids = recording.steps[rows]
    cols = [recording.layer_names.index(n) for n in names]
    marks = recording.accents[rows][:, cols]
    synth, mapping = synth_for(recording, **overrides)
    freqs, kinds = plan_tones(mapping, norms, missing, skipped)
    freqs = synth.clamp(freqs)
    unsounded = ~recording.sounded()[rows]  # every=N: these steps were recorded, not played
    kinds[unsounded] = SILENT
    marks = np.where(unsounded[:, None], 0, marks)
    n_steps, n_voices = norms.shape
    starts = _bins(max(n_steps, 1), max_columns)
    x = step_ids[starts] if n_steps else np.zeros(1)

    def reduce(values: np.ndarray, how: Any) -> np.ndarray:
        if not n_steps:
            return np.zeros((1, n_voices))
        return how.reduceat(values, starts, axis=0)

    finite = np.isfinite(norms) & ~missing
    positive = np.where(finite & (norms > 0), norms, np.nan)
    with np.errstate(invalid="ignore"):
        lo = reduce(np.where(np.isnan(positive), np.inf, positive), np.minimum)
        hi = reduce(np.where(np.isnan(positive), -np.inf, positive), np.maximum)
    lo[~np.isfinite(lo)] = np.nan
    hi[~np.isfinite(hi)] = np.nan
    dead = reduce((finite & (norms == 0)).astype(int), np.add) > 0
    spike = reduce((marks & 1 > 0).astype(int), np.add) > 0
    collapse = reduce((marks & 2 > 0).astype(int), np.add) > 0
    alarm = reduce((kinds == ALARM).astype(int), np.add) > 0
    over = reduce((kinds == OVER).astype(int), np.add) > 0
    silent = reduce((kinds != SILENT).astype(int), np.add) == 0
    pitch = reduce(np.where(kinds == SILENT, 0.0, freqs), np.maximum)

    return dict(names=names, x=x, lo=lo, hi=hi, dead=dead, spike=spike, collapse=collapse,
                alarm=alarm, over=over, silent=silent, pitch=pitch, starts=starts, steps=n_steps,
                mapping=mapping, synth=synth)


def plot_recording(recording: Recording, out: str | os.PathLike[str], layers: Any = None,
                   dpi: int = 110, steps: slice | None = None, max_columns: int = 1500,
                   **overrides: Any) -> None:
    """Write a PNG: norm curves (dead voices, accents, alarms marked) over the pitch strip."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("gradsonic plot needs matplotlib: "
                                  "pip install 'gradsonic[plot]'") from e
    d = decimate(recording, layers, steps, max_columns, **overrides)
    names, x, lo, hi, dead, spike, collapse, alarm, over, silent, pitch, starts, n_steps = (
        d[k] for k in ("names", "x", "lo", "hi", "dead", "spike", "collapse", "alarm", "over",
                       "silent", "pitch", "starts", "steps"))
    mapping, synth = d["mapping"], d["synth"]
    n_voices = len(names)

    fig, (top, strip) = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True,
                                     gridspec_kw={"height_ratios": [1.1, 1]})
    floor = np.nanmin(lo) / 3 if np.isfinite(lo).any() else 1e-3
    colors = plt.get_cmap("tab20" if n_voices > 10 else "tab10")
    for i, name in enumerate(names):
        c = colors(i % colors.N)
        if len(starts) < n_steps:  # decimated: the min-max envelope of each bin
            top.fill_between(x, lo[:, i], hi[:, i], color=c, alpha=0.35, lw=0, label=name)
        else:
            top.plot(x, hi[:, i], lw=1.2, color=c, label=name)
        top.scatter(x[dead[:, i]], np.full(dead[:, i].sum(), floor * 1.3 ** i), marker="v",
                    color=c, s=22,
                    edgecolors="black", linewidths=0.4, zorder=3)
        top.scatter(x[spike[:, i]], hi[spike[:, i], i], marker="^", color=c, s=40,
                    edgecolors="black", linewidths=0.6, zorder=4)
        top.scatter(x[collapse[:, i] & ~dead[:, i]], lo[collapse[:, i] & ~dead[:, i], i],
                    marker="v", color=c, s=40, edgecolors="black", linewidths=0.6, zorder=4)
    bad = alarm.any(axis=1)
    for s in x[bad]:
        top.axvspan(s - 0.5, s + 0.5, color="red", alpha=0.25, lw=0)
    top.set_yscale("log")
    top.set_ylim(bottom=floor / 1.5)  # dead voices sit on the floor, one row per voice
    top.set_ylabel("gradient norm")
    handles, labels = top.get_legend_handles_labels()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles += [Line2D([], [], marker="^", ls="", color="grey", mec="black", label="spike accent"),
                Line2D([], [], marker="v", ls="", color="grey", mec="black",
                       label="collapse accent / norm 0 (on the floor)"),
                Patch(color="red", alpha=0.4, label="NaN/Inf (alarm)")]
    top.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
               frameon=False)
    decimated = f", {len(starts)} bins of {starts[1] - starts[0]} steps" if len(starts) > 1 and \
        starts[1] - starts[0] > 1 else ""
    top.set_title(f"{recording.path.name}: {n_steps} steps, {n_voices} voices{decimated}")
    top.grid(True, which="major", alpha=0.3)

    shown = np.where(silent | alarm, np.nan, pitch).T
    lo_hz, hi_hz = getattr(mapping, "band", (synth.min_hz, synth.max_hz))
    step_w = (x[1] - x[0]) if len(x) > 1 else 1
    extent = (x[0] - step_w / 2, x[-1] + step_w / 2, n_voices - 0.5, -0.5)
    image = strip.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest",
                         norm=LogNorm(vmin=lo_hz, vmax=hi_hz), extent=extent)
    red = np.zeros((n_voices, len(x), 4))
    red[alarm.T] = (0.85, 0.1, 0.1, 1.0)
    strip.imshow(red, aspect="auto", interpolation="nearest", extent=extent)
    vy, vx = np.nonzero(over.T)
    strip.scatter(x[vx], vy, s=6, color="black", label="over-range")
    ay, ax_ = np.nonzero((spike | collapse).T)
    strip.scatter(x[ax_], ay, s=18, marker="^", color="white", edgecolors="black",
                  linewidths=0.4, label="accent")
    strip.set_yticks(range(n_voices))
    strip.set_yticklabels(names, fontsize=7 if n_voices > 8 else 9)
    strip.set_xlabel("optimizer step")
    strip.set_facecolor("white")
    bar = fig.colorbar(image, ax=strip, pad=0.01, fraction=0.03)
    bar.set_label("pitch played (Hz)")
    strip.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)

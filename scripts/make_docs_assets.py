"""Rebuild docs/assets: one short OGG clip and one plot per seed preset, and the mapping picture.

    python scripts/make_docs_assets.py        # uses the embedded MNIST subset; ~1 minute
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from gradsonic import LogMapping, SeedMapping
from gradsonic.cli import main as cli
from gradsonic.demo import PRESETS
from gradsonic.plot import plot_recording
from gradsonic.recording import read_recording

ASSETS = Path(__file__).resolve().parent.parent / "docs" / "assets"
STEPS = 100  # 6 s of sound per preset keeps the five clips to a few hundred KB


def mapping_picture() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = np.logspace(-5, 5, 400)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(norms, LogMapping()(norms), label='"log" (default): 440 Hz x 2^log10(norm)')
    ax.plot(norms, np.clip(SeedMapping()(norms), 20, 0.45 * 44100),
            label='"seed": 200 + 100 x norm Hz (clamped at 0.45 fs)')
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gradient norm")
    ax.set_ylabel("tone frequency (Hz)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ASSETS / "mappings.png", dpi=80)
    plt.close(fig)


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    mapping_picture()
    with tempfile.TemporaryDirectory() as tmp:
        cli(["demo", "--steps", str(STEPS), "--record", "-q", "--out", tmp])
        for name in PRESETS:
            run = Path(tmp) / f"{name}.gsr"
            cli(["render", str(run), "-o", str(ASSETS / f"{name}.ogg"), "--format", "ogg", "-q"])
            plot_recording(read_recording(run), ASSETS / f"{name}.png", dpi=50)


if __name__ == "__main__":
    main()

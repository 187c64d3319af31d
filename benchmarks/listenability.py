"""Can you keep it on for hours, and does trouble still jump out? Loudness and comfort per layout.

    python benchmarks/listenability.py [--smoke]

The fixed run: a 25-layer ReLU MLP (He init; 16 voices by default) regressing a linear target,
300 steps of SGD at lr 2e-4; the learning rate is 60x at steps 150-169 (a learning-rate
catastrophe: the norms jump up to ~27x, then fall) and every gradient is NaN at step 250 (the
update skipped, as an AMP scaler would). Its recording is
rendered in each layout, and measured:

* healthy loudness: ITU-R BS.1770 integrated loudness (pyloudnorm) of steps 100-149, LUFS;
* spike contrast: loudness of steps 150-169 minus healthy, LU;
* NaN contrast: the NaN step's level (its audio repeated to 2 s, BS.1770) minus the healthy
  steps' level measured the same way, dB;
* healthy roughness (Daniel & Weber, mosqito; median over 200 ms frames) and sharpness (DIN
  45692, mosqito) of 3 s of healthy sound. Samples are taken as pascals (a full-scale sine is
  91 dB SPL), the convention of the issue that asked for these numbers.

Then the same for the five seed presets (their first 100 steps, no alarms there but in sgd-lr1.0-bs256).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradsonic import GradientSonifier
from gradsonic.recording import read_recording
from gradsonic.render import frames, synth_for

LAYOUTS = ("sequence", "chord", "ambient")


def make_run(folder: Path, steps: int = 300, voices: str | int = 16) -> Path:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(24):
        lin = nn.Linear(32, 32)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 1))
    base = 2e-4
    opt = torch.optim.SGD(model.parameters(), lr=base)
    with GradientSonifier(model, run_dir=folder, quiet=True, voices=voices) as son:
        son.wrap(opt)
        for i in range(steps):
            for g in opt.param_groups:
                g["lr"] = 60 * base if 150 <= i < 170 else base
            opt.zero_grad()
            x = torch.randn(64, 32)
            (model(x) - 2 * x[:, :1]).pow(2).mean().backward()
            if i == 250:  # every gradient NaN, the update skipped (kept by restoring)
                before = [p.detach().clone() for p in model.parameters()]
                for p in model.parameters():
                    p.grad.fill_(float("nan"))
                opt.step()
                with torch.no_grad():
                    for p, b in zip(model.parameters(), before):
                        p.copy_(b)
            else:
                opt.step()
    return folder / "run.gsr"


def mono(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1) if x.ndim == 2 else x


def loudness(x: np.ndarray, rate: int) -> float:
    import pyloudnorm

    x = x if x.ndim == 2 else x[:, None]
    if len(x) < int(0.5 * rate):
        x = np.tile(x, (int(np.ceil(0.5 * rate / max(len(x), 1))), 1))
    return float(pyloudnorm.Meter(rate).integrated_loudness(x.astype(np.float64)))


def level(x: np.ndarray, rate: int) -> float:
    """A short sound's level: repeated to 2 s, then BS.1770 loudness."""
    reps = int(np.ceil(2.0 * rate / max(len(x), 1)))
    return loudness(np.tile(x, (reps, 1)) if x.ndim == 2 else np.tile(x, reps), rate)


def steps_audio(rec, lo: int, hi: int, layout: str) -> tuple[np.ndarray, int]:
    synth, _ = synth_for(rec, layout=layout)
    chunks = list(frames(rec, steps=slice(lo, hi), layout=layout))
    return np.concatenate(chunks), synth.sample_rate


def comfort(x: np.ndarray, rate: int) -> tuple[float, float]:
    from mosqito import roughness_dw, sharpness_din_st

    x = mono(x)[: 3 * rate].astype(np.float64)
    r = roughness_dw(x, rate, overlap=0.0)[0]
    s = sharpness_din_st(x, rate, field_type="free")
    return float(np.median(r)), float(s)


def measure(rec, layout: str) -> dict[str, float]:
    healthy, rate = steps_audio(rec, 100, 150, layout)
    spike, _ = steps_audio(rec, 150, 170, layout)
    nan, _ = steps_audio(rec, 250, 251, layout)
    one, _ = steps_audio(rec, 120, 121, layout)
    rough, sharp = comfort(np.tile(healthy, (2, 1)) if healthy.ndim == 2 else np.tile(healthy, 2),
                           rate)
    return {"healthy": loudness(healthy, rate), "spike": loudness(spike, rate) - loudness(healthy, rate),
            "nan": level(nan, rate) - level(healthy, rate), "nan_vs_one": level(nan, rate) - level(one, rate),
            "roughness": rough, "sharpness": sharp,
            "clipped": float(np.mean(np.abs(healthy) >= 0.999) + np.mean(np.abs(spike) >= 0.999))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rec = read_recording(make_run(tmp / "run"))
    print("Fixed run: 25-layer MLP, 16 voices, lr x60 at steps 150-169, NaN at step 250\n")
    print("| layout | healthy LUFS | spike over healthy (LU) | NaN step over healthy (dB) | "
          "healthy roughness (asper) | healthy sharpness (acum) | clipped samples |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layout in LAYOUTS:
        m = measure(rec, layout)
        print(f"| {layout} | {m['healthy']:.1f} | {m['spike']:+.1f} | {m['nan']:+.1f} | "
              f"{m['roughness']:.2f} | {m['sharpness']:.2f} | {m['clipped']:.1%} |")
    if args.smoke:
        return
    from gradsonic.demo import PRESETS, load_mnist, train_preset

    print("\nSeed presets (first 100 steps, embedded MNIST), healthy LUFS / roughness per layout:\n")
    print("| preset | " + " | ".join(f"{lay} LUFS / asper" for lay in LAYOUTS) + " |")
    print("| --- |" + " --- |" * len(LAYOUTS))
    images, labels = load_mnist(None)
    for name, preset in PRESETS.items():
        out = tmp / name
        out.mkdir()
        train_preset(preset, images, labels, steps=100, seed=preset.seed_for(True), wav=None,
                     record=out / "run.gsr", mapping="log")
        prec = read_recording(out / "run.gsr")
        cells = []
        for layout in LAYOUTS:
            x, rate = steps_audio(prec, 0, 100, layout)
            r, _ = comfort(x, rate)
            cells.append(f"{loudness(x, rate):.1f} / {r:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())

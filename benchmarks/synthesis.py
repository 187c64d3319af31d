"""Synthesis speed: seconds of audio rendered per second of one core (seed layout, 4 layers).

    python benchmarks/synthesis.py [--steps 20000] [--smoke]

Compares the 2019 experiment's per-tone loop (np.sin per 10 ms tone, concatenated) with
gradsonic's block renderer (Synth.render over many steps at once), in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _harness import environment
from gradsonic.mapping import SeedMapping, plan_tones
from gradsonic.synth import Synth


def original(norms: np.ndarray, sr: int = 44100, duration: float = 0.01,
             volume: float = 0.1) -> np.ndarray:
    out = []
    for step in norms:
        for norm in step:
            f = 200 + 100 * norm
            out.append((volume * np.sin(2 * np.pi * np.arange(sr * duration) * f / sr))
                       .astype(np.float32))
        out.append(np.zeros(int(sr * duration * 2), dtype=np.float32))
    return np.concatenate(out)


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps = 200
    print(environment())
    rng = np.random.default_rng(0)
    norms = rng.lognormal(0.0, 1.0, (args.steps, 4)).astype(np.float32)
    synth = Synth()
    audio_seconds = args.steps * synth.step_samples(4) / synth.sample_rate
    missing = np.zeros(norms.shape, dtype=bool)
    mapping = SeedMapping()

    def ours(batch: int) -> None:
        for lo in range(0, args.steps, batch):
            freqs, kinds = plan_tones(mapping, norms[lo:lo + batch], missing[lo:lo + batch])
            synth.render(freqs, kinds)

    print(f"\n{args.steps} steps = {audio_seconds:.0f} s of audio; CPU seconds, best of 5\n")
    print("| renderer | CPU s | audio s per CPU s (x real time) |\n| --- | --- | --- |")
    t = best_of(lambda: original(norms), repeats=3 if not args.smoke else 1)
    print(f"| original per-tone loop | {t:.3f} | {audio_seconds / t:,.0f}x |")
    for batch in (1, 8, 64, 512):
        t = best_of(lambda: ours(batch))
        print(f"| gradsonic, {batch} steps per render | {t:.3f} | {audio_seconds / t:,.0f}x |")


if __name__ == "__main__":
    main()

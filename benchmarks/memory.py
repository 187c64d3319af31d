"""Memory over long runs: RSS growth through mapping + synthesis + sinks.

    python benchmarks/memory.py [--steps 1000000] [--wav-steps 100000] [--smoke]

1. ``--steps`` optimizer steps of a 4-layer model (gradients fixed, so the run measures gradsonic,
   not autograd) through the whole pipeline into a counting sink.
2. ``--wav-steps`` steps with the WAV sink (the file is deleted afterwards).
RSS is sampled every 5% of the run; growth is counted from the sample after the first 5%
(allocator warm-up) to the end. The 2019 code kept every frame: +10.6 KB per step.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np
import torch

from _harness import environment
from gradsonic import GradientSonifier, Sink


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class CountingSink(Sink):
    def __init__(self) -> None:
        self.closed = False
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        self.frames += frames.size


def run(steps: int, **kwargs) -> tuple[list[float], float, GradientSonifier]:
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)])
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    son = GradientSonifier(model, mapping="seed", **kwargs)
    samples = []
    t0 = time.perf_counter()
    for i in range(steps):
        son.step()
        if i % max(1, steps // 20) == 0:
            samples.append(rss_mb())
    son.close()
    samples.append(rss_mb())
    return samples, time.perf_counter() - t0, son


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--wav-steps", type=int, default=100_000)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.wav_steps = 20_000, 5_000
    print(environment())
    print("\n| run | steps | RSS after 5% (MB) | RSS at end (MB) | growth (MB) | peak RSS (MB) | "
          "steps/s |\n| --- | --- | --- | --- | --- | --- | --- |")
    sink = CountingSink()
    samples, secs, son = run(args.steps, wav=None, sinks=[sink])
    assert sink.frames == args.steps * son.synth.step_samples(4)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| mapping + synthesis -> counting sink | {args.steps:,} | {samples[1]:.1f} | "
          f"{samples[-1]:.1f} | {samples[-1] - samples[1]:+.1f} | {peak:.1f} | "
          f"{args.steps / secs:,.0f} |")
    series = [" ".join(f"{v:.0f}" for v in samples)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "memory.wav")
        samples, secs, son = run(args.wav_steps, wav=path)
        size = os.path.getsize(path) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| WAV sink ({size:,.0f} MB written) | {args.wav_steps:,} | {samples[1]:.1f} | "
          f"{samples[-1]:.1f} | {samples[-1] - samples[1]:+.1f} | {peak:.1f} | "
          f"{args.wav_steps / secs:,.0f} |")
    series.append(" ".join(f"{v:.0f}" for v in samples))
    print("\nRSS samples (MB, every 5% of each run):\n" + "\n".join(f"  {s}" for s in series))


if __name__ == "__main__":
    main()

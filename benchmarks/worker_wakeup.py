"""The worker's CPU per wake-up with live audio, this checkout against an earlier revision.

    python benchmarks/worker_wakeup.py [--ref 3b24c74] [--rounds 30] [--wakes 20] [--gap 0.02]

Beside live audio a training step slower than 20 ms wakes the worker once per step, and each
wake-up renders a block of *one* step: norms -> voices -> accents -> pitches -> samples -> the
live ring (and the WAV/recording/logger hand-over). What that costs is per call, not per sample.

Both versions run side by side in one process (the earlier ``src/gradsonic`` imported as
``gradsonic_ref`` from ``git archive``, as ``before_after.py`` does), each with its own sonifier
on an identical copy of the pytorch/examples MNIST network (4 voices, default mapping and
accents, a live sink on a stream that is never pulled, no files), fed the same real gradients.
A round times ``--wakes`` one-step blocks of each version (``Worker._process_block``, the
thread's CPU clock), each after sleeping ``--gap`` seconds (as the worker sleeps between steps;
``--gap 0`` measures the code warm), versions in rotating order. Reported: each version's median
CPU per wake-up, and this / ref per round (median, min .. max).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from _harness import environment
from before_after import REPO, load_ref


class _SilentStream:  # a live device that is never pulled: the ring fills, the drop policy runs
    def start_stream(self) -> None: ...
    def stop_stream(self) -> None: ...
    def close(self) -> None: ...
    def is_active(self) -> bool: return True


def _net() -> torch.nn.Module:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead_client import _mnist_net

    return _mnist_net()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default="3b24c74")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--wakes", type=int, default=20)
    p.add_argument("--gap", type=float, default=0.02)
    args = p.parse_args(argv)
    ref = load_ref(args.ref)
    import gradsonic

    print(environment())
    short = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.ref],
                           capture_output=True, text=True).stdout.strip()
    print(f"ref: {args.ref} ({short}); this: working tree; gap {args.gap * 1e3:.0f} ms, "
          f"{args.rounds} rounds x {args.wakes} wake-ups")
    torch.manual_seed(0)
    base = _net()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    versions = {}
    for name, pkg in (("ref", ref), ("this", gradsonic)):
        model = _net()
        model.load_state_dict(base.state_dict())
        sink = pkg.sinks.LiveSink(stream_factory=lambda *a, **k: _SilentStream())
        son = pkg.GradientSonifier(model, wav=None, record=None, live=sink, quiet=True)
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.0))  # lr 0: same weights
        torch.nn.functional.nll_loss(model(x), y).backward()
        versions[name] = (son, opt)
    per_round: dict[str, list[float]] = {n: [] for n in versions}
    names = list(versions)
    step = 0
    for r in range(args.rounds):
        for name in names[r % 2:] + names[: r % 2]:
            son, opt = versions[name]
            worker = son._worker
            times = []
            for _ in range(args.wakes):
                pending = son._tap.collect(step, opt)  # this version's own read of the norms
                step += 1
                if args.gap:
                    time.sleep(args.gap)
                t0 = time.thread_time_ns()
                worker._process_block([pending])
                times.append(time.thread_time_ns() - t0)
            per_round[name].append(statistics.median(times) / 1e3)
    for son, _ in versions.values():
        with warnings.catch_warnings():  # "heard no optimizer step": the blocks went in by hand
            warnings.simplefilter("ignore")
            son.close()
    ratios = [a / b for a, b in zip(per_round["this"], per_round["ref"])]
    print("\n| version | CPU us per one-step wake-up: median (min .. max of rounds) |")
    print("| --- | --- |")
    for name in names:
        v = per_round[name]
        print(f"| {name} | {statistics.median(v):.0f} ({min(v):.0f} .. {max(v):.0f}) |")
    print(f"\nthis / ref per round: median {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f} .. {max(ratios):.2f})")


if __name__ == "__main__":
    main()

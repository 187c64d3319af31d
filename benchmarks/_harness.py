"""Interleaved A/B timing: the shared machinery of the benchmark scripts.

Machines here are shared and noisy (identical blocks of training steps differ by +-20%), so every
benchmark times short blocks of each variant in rotating order, many rounds, and reports each
variant's per-round ratio against the baseline measured in the same round: median and min-max.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def environment() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return (f"python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, device: {dev}\n"
            f"command: {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")


@dataclass
class Result:
    name: str
    seconds: list[float] = field(default_factory=list)


def interleave(variants: dict[str, Callable[[], None]], rounds: int, baseline: str,
               sync: Callable[[], None] = lambda: None) -> dict[str, Result]:
    """Time each variant once per round, rotating the order each round."""
    names = list(variants)
    results = {n: Result(n) for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync()
            t0 = time.perf_counter()
            variants[n]()
            sync()
            results[n].seconds.append(time.perf_counter() - t0)
    return results


def table(results: dict[str, Result], baseline: str, per: int, unit: str = "step",
          ratios: bool = True) -> str:
    """Rows of: variant, median time per unit, overhead vs baseline (median, min-max of rounds)."""
    if not ratios:
        lines = [f"| variant | median ms/{unit} | min .. max ms/{unit} of rounds |", "| --- | --- | --- |"]
        for name, res in results.items():
            lo, mid, hi = (x / per * 1e3 for x in (min(res.seconds), statistics.median(res.seconds),
                                                    max(res.seconds)))
            lines.append(f"| {name} | {mid:.3f} | {lo:.3f} .. {hi:.3f} |")
        return "\n".join(lines)
    base = results[baseline].seconds
    lines = [f"| variant | median ms/{unit} | overhead vs {baseline} (median) | min .. max of rounds |",
             "| --- | --- | --- | --- |"]
    for name, res in results.items():
        ms = statistics.median(res.seconds) / per * 1e3
        if name == baseline:
            lines.append(f"| {name} | {ms:.3f} | - | - |")
            continue
        ratios = [a / b - 1 for a, b in zip(res.seconds, base)]
        lines.append(f"| {name} | {ms:.3f} | {statistics.median(ratios):+.1%} | "
                     f"{min(ratios):+.1%} .. {max(ratios):+.1%} |")
    return "\n".join(lines)

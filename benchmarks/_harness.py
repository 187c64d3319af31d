"""Interleaved A/B timing: the shared machinery of the benchmark scripts.

Machines here are shared and noisy (identical blocks of training steps differ by +-20%), so every
benchmark times short blocks of each variant in rotating order, many rounds, and reports each
variant's per-round ratio against the baseline measured in the same round: median and min-max.
"""

from __future__ import annotations

import argparse
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


def seed_cnn_args(doc: str, argv: list[str] | None, **more: object) -> argparse.Namespace:
    """The seed-CNN benchmarks' shared options (``--smoke``: a few seconds)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[10, 64])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--block", type=int, default=40, help="steps per timed block")
    p.add_argument("--smoke", action="store_true", help="a few seconds, to prove the script runs")
    for flag, default in more.items():
        p.add_argument(f"--{flag}", default=default)
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.rounds, args.block = [10], 2, 5
    return args


def training_block(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list,
                   before_step: Callable[[], None] | None = None) -> Callable[[], None]:
    """One timed block: a plain training step per batch (NLL loss, as the seed CNN trains)."""
    import torch.nn.functional as F

    def run() -> None:
        for x, y in batches:
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            if before_step is not None:
                before_step()
            opt.step()
    return run


def seed_cnn_copies(names: tuple[str, ...], batch: int, block: int
                    ) -> tuple[list, dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
    """``block`` MNIST batches and, per variant name, an identical seed CNN with its optimizer."""
    import copy

    from gradsonic.demo import SeedCNN, load_mnist

    x_all, y_all = load_mnist(None)
    batches = [(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
               for i in range(block)]
    torch.manual_seed(1)
    proto = SeedCNN()
    models = {n: copy.deepcopy(proto) for n in names}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5) for n, m in models.items()}
    return batches, models, opts



def default_settings() -> dict:
    """A recording's settings as a default GradientSonifier stores them (for synthetic runs)."""
    from gradsonic.accents import Accents
    from gradsonic.mapping import LogMapping, mapping_settings

    return {"mapping": mapping_settings(LogMapping()), "sample_rate": 44100,
            "tone_duration": 0.01, "silence_duration": 0.02, "amplitude": 0.1,
            "layout": "sequence", "accents": Accents().settings(), "every": 1}

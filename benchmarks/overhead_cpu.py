"""Training-step overhead on CPU: the seed CNN bare, the original's way, and with gradsonic.

    python benchmarks/overhead_cpu.py [--batch 10 64] [--rounds 30] [--block 40]

Variants, each on its own copy of the model with the same batches:
  bare       plain training steps
  original   the 2019 way: per-layer weight.grad.norm() read to the host one by one, each step
  gradsonic  GradientSonifier(wav=...) wrapped around the optimizer (tones rendered and streamed)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from _harness import environment, interleave, table
from gradsonic import GradientSonifier
from gradsonic.demo import SeedCNN, load_mnist


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[10, 64])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--block", type=int, default=40, help="steps per timed block")
    args = p.parse_args(argv)
    print(environment())
    x_all, y_all = load_mnist(None)
    tmp = Path(tempfile.mkdtemp())
    for batch in args.batch:
        batches = [(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
                   for i in range(args.block)]
        torch.manual_seed(1)
        proto = SeedCNN()
        models = {n: copy.deepcopy(proto) for n in ("bare", "original", "gradsonic")}
        opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5) for n, m in models.items()}
        son = GradientSonifier(models["gradsonic"], wav=tmp / f"bench{batch}.wav", mapping="seed")
        son.wrap(opts["gradsonic"])
        layers = models["original"].ordered_layers()

        def block(name: str):
            model, opt = models[name], opts[name]

            def run() -> None:
                for x, y in batches:
                    opt.zero_grad()
                    F.nll_loss(model(x), y).backward()
                    if name == "original":
                        [layer.weight.grad.norm().item() for layer in layers]
                    opt.step()
            return run

        variants = {n: block(n) for n in models}
        for run in variants.values():  # warm-up
            run()
        results = interleave(variants, args.rounds, "bare")
        son.close()
        print(f"\nseed CNN, batch {batch}, {args.rounds} rounds x {args.block} steps "
              f"({son.steps} sonified steps, {son.stats.frames} frames written)")
        print(table(results, "bare", per=args.block))


if __name__ == "__main__":
    main()

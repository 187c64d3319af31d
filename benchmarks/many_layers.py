"""Tap cost with many layers: a model with 1,000 weight tensors, per-step time on the training thread.

    python benchmarks/many_layers.py [--layers 1000] [--steps 300] [--smoke]

Times what gradsonic adds to the training thread per optimizer step - the tap reading all norms
(``NormTap.collect``, what ``son.step()`` runs before its O(1) queue put) - against the original's
way (per-layer ``.norm().item()``), gradients already in place, interleaved in blocks. Rendering
1,000 tones a step (10 s of audio) is the worker's job and is not timed here.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch import nn

from _harness import environment, interleave, table
from gradsonic.tap import NormTap


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=1000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.layers, args.steps, args.rounds = 100, 20, 2
    print(environment())
    model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(args.layers)])
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    tap_ = NormTap(model, None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # what a wrapped step reads
    weights = [m.weight for m in model]
    queue: collections.deque = collections.deque(maxlen=1)  # stands in for the O(1) put

    def tap() -> None:
        for i in range(args.steps):
            queue.append(tap_.collect(i, optimizer))

    def original() -> None:
        for _ in range(args.steps):
            [w.grad.norm().item() for w in weights]

    def nothing() -> None:
        for _ in range(args.steps):
            pass

    results = interleave({"empty loop": nothing, "gradsonic tap": tap,
                          "original per-layer .item()": original}, args.rounds, "empty loop")
    print(f"\n{args.layers} weight tensors of 32x32, {args.rounds} rounds x {args.steps} steps "
          "(time per step is the training-thread cost)")
    print(table(results, "empty loop", per=args.steps, ratios=False))

    # Attaching must be linear in the number of parameters (it was quadratic: 20,000 layers 5 s).
    from gradsonic import GradientSonifier

    sizes = (500, 2000) if args.smoke else (5000, 20000)
    print("\n| layers | attach (GradientSonifier + wrap) s | per layer us |\n| --- | --- | --- |")
    for n in sizes:
        big = nn.Sequential(*[nn.Linear(4, 4) for _ in range(n)])
        opt = torch.optim.SGD(big.parameters(), lr=0.1)
        t0 = time.perf_counter()
        son = GradientSonifier(big, wav=None)
        son.wrap(opt)
        for p in big.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()  # the first step builds the optimizer's plan
        seconds = time.perf_counter() - t0
        son.close()
        print(f"| {n:,} | {seconds:.3f} | {seconds / n * 1e6:.1f} |")


if __name__ == "__main__":
    main()

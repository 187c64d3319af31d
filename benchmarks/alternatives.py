"""gradsonic against the ecosystem's per-step gradient monitors, side by side on the CPU seed CNN.

    python benchmarks/alternatives.py [--rounds 30] [--block 40] [--smoke]

Variants (each its own model copy, same batches, rotating order), batch 10:
  bare        plain training steps
  gradsonic   GradientSonifier(wav=...)
  lightning   lightning.pytorch.utilities.grad_norm(model, 2) every step (a dict of per-parameter
              norms as Python floats - what Lightning users log in on_before_optimizer_step)
  wandb       wandb.watch(model, log="gradients", log_freq=1) with WANDB_MODE=offline
Each alternative is skipped with a note if its package is not installed.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from _harness import environment, interleave, table
from gradsonic import GradientSonifier
from gradsonic.demo import SeedCNN, load_mnist


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--block", type=int, default=40)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.block = 2, 5
    print(environment())
    tmp = Path(tempfile.mkdtemp())
    x_all, y_all = load_mnist(None)
    batches = [(x_all[i * 10:(i + 1) * 10], y_all[i * 10:(i + 1) * 10]) for i in range(args.block)]
    torch.manual_seed(1)
    proto = SeedCNN()
    names = ["bare", "gradsonic"]
    hooks = {}
    try:
        from lightning.pytorch.utilities import grad_norm

        names.append("lightning")
        hooks["lightning"] = lambda model: grad_norm(model, norm_type=2)
    except ModuleNotFoundError as e:
        print(f"(lightning skipped: {e})")
    run = None
    try:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run = wandb.init(project="gradsonic-bench", dir=str(tmp))
        names.append("wandb")
    except Exception as e:  # not installed, or refuses to start offline
        print(f"(wandb skipped: {e!r})")
    models = {n: copy.deepcopy(proto) for n in names}
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5) for n, m in models.items()}
    son = GradientSonifier(models["gradsonic"], wav=tmp / "alt.wav", mapping="seed")
    son.wrap(opts["gradsonic"])
    if run is not None:
        wandb.watch(models["wandb"], log="gradients", log_freq=1)

    def block(name: str):
        model, opt, hook = models[name], opts[name], hooks.get(name)

        def go() -> None:
            for x, y in batches:
                opt.zero_grad()
                loss = F.nll_loss(model(x), y)
                loss.backward()
                if hook is not None:
                    hook(model)
                opt.step()
                if name == "wandb":
                    wandb.log({"loss": loss.item()})  # watch() logs gradients with each log()
        return go

    variants = {n: block(n) for n in names}
    for go in variants.values():
        go()
    results = interleave(variants, args.rounds, "bare")
    son.close()
    if run is not None:
        run.finish()
    print(f"\nseed CNN, batch 10, {args.rounds} rounds x {args.block} steps")
    print(table(results, "bare", per=args.block))


if __name__ == "__main__":
    main()

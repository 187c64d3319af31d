"""Attach gradsonic to an existing training loop: two added lines, one to detach.

    python examples/plain_loop.py --steps 300 --wav plain.wav
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from gradsonic import GradientSonifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--wav", default="plain.wav")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.randn(32, 1)

    sonifier = GradientSonifier(model, wav=args.wav)  # + line 1
    optimizer = sonifier.wrap(optimizer)              # + line 2

    for step in range(args.steps):  # the loop itself is unchanged
        x = torch.randn(64, 32)
        loss = ((model(x) - x @ target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    sonifier.close()  # optional: also happens at exit
    print(f"wrote {args.wav}: {sonifier.steps} steps, layers {', '.join(sonifier.layer_names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

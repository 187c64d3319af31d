"""The floor of the default sonifier: one read of every gradient on the training thread.

    python benchmarks/read_floor.py [--steps 600] [--warmup 60] [--smoke]

Trains the pytorch/examples MNIST network (Adadelta, batch 64, random batches of MNIST's shape)
and, right after each ``optimizer.step()`` - where gradsonic's hook reads the norms - times one
way of reading all 8 gradients' L2 norms, the ways in rotation so that each sees the same
training: ``foreach+stack`` is what gradsonic does on CPU (``torch._foreach_norm``, then one
vector), ``foreach`` without the stack, ``vector_norm`` one call per gradient, ``dot`` BLAS
``g.dot(g)`` per gradient then one ``sqrt`` (it sums in another order than torch's norm: not
bit-equal), ``nothing`` the timer alone. Prints each way's median and 10th percentile in us.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from _harness import environment
from overhead_client import _mnist_net


def _foreach_stack(gs: list[torch.Tensor]) -> object:
    return torch.stack(torch._foreach_norm(gs, 2))


def _foreach(gs: list[torch.Tensor]) -> object:
    return torch._foreach_norm(gs, 2)


def _vector_norm(gs: list[torch.Tensor]) -> object:
    return torch.stack([torch.linalg.vector_norm(g) for g in gs])


def _dot(gs: list[torch.Tensor]) -> object:
    return torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)) for g in gs]).sqrt_()


def _nothing(gs: list[torch.Tensor]) -> object:
    return None


WAYS = {"foreach+stack": _foreach_stack, "foreach": _foreach, "vector_norm": _vector_norm,
        "dot": _dot, "nothing": _nothing}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--smoke", action="store_true", help="a few steps: check that it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 25, 5
    print(environment())
    torch.manual_seed(0)
    model = _mnist_net()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    params = list(model.parameters())
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    names = list(WAYS)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.steps):
        opt.zero_grad()
        F.nll_loss(model(x), y).backward()
        opt.step()
        name = names[i % len(names)]
        grads = [q.grad for q in params]
        t0 = time.perf_counter()
        WAYS[name](grads)
        if i >= args.warmup:
            times[name].append(time.perf_counter() - t0)
    print(f"\n{len(params)} gradients, {sum(q.numel() for q in params):,} elements, "
          f"{args.steps - args.warmup} timed steps\n")
    print("| way | median us | p10 us |\n| --- | --- | --- |")
    for name in names:
        ts = sorted(times[name])
        print(f"| {name} | {1e6 * statistics.median(ts):.0f} | {1e6 * ts[len(ts) // 10]:.0f} |")


if __name__ == "__main__":
    main()

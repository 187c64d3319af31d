"""DDP with torchrun: gradients are identical on every rank, so rank 0 alone makes the sound.

    torchrun --standalone --nproc_per_node 2 examples/ddp_torchrun.py --out ddp-out

Writes ddp-out/ddp.wav (rank 0 only) and ddp-out/norms.npy (the norms rank 0 heard). Runs on CPU
with the gloo backend, or on GPUs with nccl (one per process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gradsonic import GradientSonifier


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 1))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 16, generator=g), torch.randn(8, 1, generator=g)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ddp-out")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if use_cuda else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = DDP(make_model().to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    heard = []
    sonifier = GradientSonifier(model, wav=out / "ddp.wav", on_step=heard.append)  # + line 1
    optimizer = sonifier.wrap(optimizer)                                           # + line 2

    for step in range(args.steps):
        x, y = global_batch(step)
        x, y = x[rank::world].to(device), y[rank::world].to(device)  # this rank's shard
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    sonifier.close()
    if sonifier.active:
        np.save(out / "norms.npy", np.stack([r.norms for r in heard]))
    print(f"rank {rank}/{world}: {'sound and files' if sonifier.active else 'silent'}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

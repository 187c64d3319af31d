"""The extra cost of FSDP2 (fully_shard) norms: one all-reduce of [n_layers] per step.

    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_allreduce.py [--rounds 20] [--block 20]

Two copies of an 8-layer MLP (512 wide), every Linear sharded over the ranks (gloo on CPU, nccl on
GPUs): bare FSDP steps vs. the same with a GradientSonifier (rank 0 sounds, rank 1 only joins the
all-reduce), interleaved in blocks; rank 0 prints the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import environment, interleave, table  # noqa: E402

from gradsonic import GradientSonifier  # noqa: E402


def make(device):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(512, 512), nn.ReLU())]).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--block", type=int, default=20)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else "cpu"
    x = torch.randn(64, 512, device=device)
    models = {"fsdp bare": make(device), "fsdp + gradsonic": make(device)}
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3) for n, m in models.items()}
    son = GradientSonifier(models["fsdp + gradsonic"], wav=Path(tempfile.mkdtemp()) / "f.wav")
    son.wrap(opts["fsdp + gradsonic"])

    def block(name):
        def run():
            for _ in range(args.block):
                opts[name].zero_grad()
                models[name](x).square().mean().backward()
                opts[name].step()
        return run

    variants = {n: block(n) for n in models}
    for run in variants.values():
        run()
    sync = torch.cuda.synchronize if cuda else dist.barrier
    results = interleave(variants, args.rounds, "fsdp bare", sync=sync)
    son.close()
    if rank == 0:
        print(environment())
        print(f"\nworld size {dist.get_world_size()}, 8 sharded Linear(512, 512), batch 64, "
              f"{args.rounds} rounds x {args.block} steps")
        print(table(results, "fsdp bare", per=args.block))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

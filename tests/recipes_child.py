"""Run under torchrun by test_recipes: sharded and early-built sonifiers on CPU with gloo.

    torchrun ... tests/torchrun_child.py tests/recipes_child.py MODE OUT STEPS

MODE: ``fsdp2`` (every Linear and the model ``fully_shard``-ed across the ranks),
``hsdp-2x1`` / ``hsdp-1x2`` (the same on a (replicate, shard) DeviceMesh), ``fsdp1-orig`` /
``fsdp1-flat`` (FullyShardedDataParallel with and without use_orig_params), ``ddp-early``
(the sonifier made before init_process_group, one shared run_dir) and ``ddp-early-norank``
(the same, by a launcher that sets no RANK: decided at the first step). Every rank trains its
slice of the same global batches; rank 0 saves the norms it heard to OUT/norms.npy.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from ddp_torchrun import global_batch, make_model  # noqa: E402

from gradsonic import GradientSonifier  # noqa: E402
from gradsonic.errors import ConfigError  # noqa: E402

mode, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
heard = []
son = None
model = make_model()
if mode.startswith("ddp-early"):  # attached before the process group exists
    rank_env = os.environ.pop("RANK") if mode == "ddp-early-norank" else None
    run_dir = out / "run" if mode == "ddp-early" else None  # else gradsonic-runs/<run>/
    son = GradientSonifier(model, run_dir=run_dir, on_step=heard.append)
    if rank_env is not None:
        os.environ["RANK"] = rank_env  # init_process_group reads it
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
if mode == "fsdp2" or mode.startswith("hsdp"):
    from torch.distributed.fsdp import fully_shard

    mesh = None
    if mode.startswith("hsdp"):
        from torch.distributed.device_mesh import init_device_mesh

        shape = (2, 1) if mode == "hsdp-2x1" else (1, 2)
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard"))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
elif mode.startswith("fsdp1"):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = FSDP(model, use_orig_params=mode == "fsdp1-orig", device_id=torch.device("cpu"))
elif mode.startswith("ddp-early"):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
if son is None:
    try:
        son = GradientSonifier(model, wav=out / "run.wav", on_step=heard.append)
    except ConfigError as e:
        print(f"rank {rank}: refused: {e}", flush=True)
        dist.destroy_process_group()
        sys.exit(0)
optimizer = son.wrap(optimizer)
assert son._tap.sharded == (mode not in ("ddp-early", "ddp-early-norank"))
for step in range(steps):
    x, y = global_batch(step)
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x[rank::world]), y[rank::world]).backward()
    optimizer.step()
son.close()
if son.active:
    np.save(out / "norms.npy", np.stack([r.norms for r in heard]))
print(f"rank {rank}: {'sound' if son.active else 'silent'}", flush=True)
dist.destroy_process_group()

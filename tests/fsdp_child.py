"""Run under torchrun by test_integrations: FSDP2 (fully_shard) on CPU with gloo.

Trains the DDP example's model, every Linear sharded across ranks, on the same global batches;
rank 0 saves the norms it heard to OUT/norms.npy and the time per step of the tap's all-reduce.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from ddp_torchrun import global_batch, make_model  # noqa: E402

from gradsonic import GradientSonifier  # noqa: E402

out = Path(sys.argv[1])
steps = int(sys.argv[2])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = make_model()
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer)
fully_shard(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
heard = []
sonifier = GradientSonifier(model, wav=out / "fsdp.wav", on_step=heard.append)
optimizer = sonifier.wrap(optimizer)
assert sonifier._tap.sharded
for step in range(steps):
    x, y = global_batch(step)
    optimizer.zero_grad()
    nn.functional.mse_loss(model(x[rank::world]), y[rank::world]).backward()
    optimizer.step()
sonifier.close()
if sonifier.active:
    np.save(out / "norms.npy", np.stack([r.norms for r in heard]))
print(f"rank {rank}: {'sound' if sonifier.active else 'silent'}", flush=True)
dist.destroy_process_group()

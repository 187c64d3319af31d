"""Sharded gradients: which process groups a parameter's squared norm is summed over.

FSDP2 (``fully_shard``), HSDP and other DTensor parameters are summed over the mesh dimensions
they are *sharded* on - never over replicas, which hold the same gradient. FSDP1
(``FullyShardedDataParallel``) with ``use_orig_params=True`` is summed over its process group;
with flattened parameters it is refused. Per group of parameters sharded alike, one fused norm
over the local shards and one asynchronous all-reduce of ``[squared norms, has-gradient flags]``.
Every rank must take part at the same step (the sonifier's silent ranks do).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, GradsonicWarning
from .norms import PendingNorms, dense, fused_norms, local, to_host, unscale


def _dtensor_type() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4 or no distributed support
        return None
    return DTensor


def _fsdp1_groups(model: nn.Module) -> dict[int, Any]:
    """FSDP1 (``FullyShardedDataParallel``): the process group of each original parameter
    (``use_orig_params=True``: each rank holds a flat slice of it). Flattened parameters
    (``use_orig_params=False``) have no per-layer gradient to hear: refused."""
    if not any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return {}
    from torch.distributed.fsdp import FullyShardedDataParallel

    out: dict[int, Any] = {}
    for m in model.modules():
        if not isinstance(m, FullyShardedDataParallel):
            continue
        handle = getattr(m, "_handle", None)
        if handle is None:
            continue
        if not getattr(handle, "_use_orig_params", False):
            raise ConfigError(
                "FullyShardedDataParallel(use_orig_params=False) trains flattened, sharded "
                "parameters, which have no per-layer gradient to hear. Wrap the model with "
                "FullyShardedDataParallel(..., use_orig_params=True), or shard it with "
                "torch.distributed.fsdp.fully_shard (FSDP2): both are heard exactly")
        group = m.process_group
        if group is None or group.size() <= 1:
            continue
        for p in handle.flat_param._params or ():
            out[id(p)] = group
    return out


class Reduced:
    """The all-reduce(s) of one vector ``[squared norms..., has-gradient flags...]``."""

    __slots__ = ("works",)

    def __init__(self, works: list[Any]) -> None:
        self.works = works

    def wait(self) -> None:
        for w in self.works:
            w.wait()
        self.works = []


class Sharding:
    """The sharded parameters of one model, and their step's all-reduce."""

    def __init__(self, model: nn.Module) -> None:
        self.dtensor = _dtensor_type()
        self.fsdp1 = _fsdp1_groups(model)
        self.warned_partial = False

    def reduce_groups(self, params: list[nn.Parameter]
                      ) -> list[tuple[np.ndarray, list[int], tuple[Any, ...]]]:
        """Parameters by the process groups their squared norms are summed over: the mesh
        dimensions a DTensor is sharded on (not those it is replicated on: HSDP's replicas hold
        the same gradient), or an FSDP1 module's group; ``()`` for whole local gradients."""
        by_key: dict[tuple[int, ...], tuple[list[int], tuple[Any, ...]]] = {}
        for i, p in enumerate(params):
            groups = self.groups_of(p)
            entry = by_key.setdefault(tuple(map(id, groups)), ([], groups))
            entry[0].append(i)
        return [(np.asarray(idx, dtype=np.intp), idx, groups) for idx, groups in by_key.values()]

    def groups_of(self, p: nn.Parameter) -> tuple[Any, ...]:
        if self.dtensor is not None and isinstance(p, self.dtensor):
            mesh = p.device_mesh
            if any(pl.is_partial() for pl in p.placements) and not self.warned_partial:
                self.warned_partial = True
                warnings.warn("gradsonic: a parameter with a Partial DTensor placement is heard "
                              "from its local part only", GradsonicWarning, stacklevel=6)
            return tuple(mesh.get_group(d) for d, pl in enumerate(p.placements)
                         if pl.is_shard() and mesh.size(d) > 1)
        group = self.fsdp1.get(id(p))
        return (group,) if group is not None else ()

    def collect(self, plan: Any, step: int, layer_names: tuple[str, ...], skipped: bool,
                scale: torch.Tensor | None, inf: Any) -> PendingNorms:
        """Sharded gradients: norm = sqrt(sum over the shard group of local squared norms).

        Per group of parameters sharded alike, one fused norm over the local shards and one
        asynchronous all-reduce of ``[squared norms, has-gradient flags]`` (float64), over the
        process group(s) of the dimensions they are sharded on - never over replicas, which
        hold the same gradient. Every rank must call this at the same step (the sonifier's
        silent ranks do). Unsharded parameters are read locally.
        """
        import torch.distributed as dist

        parts = []
        for positions, idx, groups in plan.reduce:
            grads = [plan.params[i].grad for i in idx]
            if not groups:
                have = [k for k, g in enumerate(grads) if g is not None]
                if have:
                    vec = fused_norms([dense(local(grads[k])) for k in have])
                    parts.append(to_host(positions[have], unscale(vec, scale)))
                continue
            have = [k for k, g in enumerate(grads) if g is not None]
            device = next((local(g).device for g in grads if g is not None),
                          plan.params[idx[0]].device)
            if device.type == "meta":
                device = torch.device("cpu")
            vec = torch.zeros(2 * len(idx), dtype=torch.float64, device=device)
            if have:
                shards = [local(grads[k]) for k in have]
                nonempty = [k for k, g in zip(have, shards) if g.numel()]
                if nonempty:
                    norms = unscale(fused_norms([dense(local(grads[k])) for k in nonempty]), scale)
                    at = torch.tensor(nonempty, dtype=torch.long).to(device)
                    vec[at] = norms.double().square()
                flags = torch.tensor(have, dtype=torch.long).to(device) + len(idx)
                vec[flags] = 1.0
            works = []
            for group in groups:  # (several only for a tensor sharded on several mesh dims)
                if works:
                    works[-1].wait()
                works.append(dist.all_reduce(vec, op=dist.ReduceOp.SUM, group=group,
                                             async_op=True))
            reduced = Reduced(works)
            if device.type == "cuda":
                reduced.wait()  # orders the current stream after the all-reduce; the host goes on
            parts.append(to_host(positions, vec, reduced))
        return PendingNorms(step, parts, plan, layer_names, skipped, inf)

"""Reading the gradient norms of the parameters an optimizer is about to update.

The training thread calls :meth:`NormTap.collect` once per optimizer step with that optimizer (or
``None`` for ``son.step()`` by hand, which reads the model). The tap looks at the parameters the
optimizer holds *now* - its ``param_groups``, so replaced layers, new parametrizations,
``add_param_group`` and unfreezing are heard - and maps each to its voice (:mod:`gradsonic.voices`).
That mapping is cached per optimizer and rebuilt only when the list of parameters changes (one
``tuple(map(id, ...))`` per step tells). It then issues one fused ``torch._foreach_norm`` per
(device, dtype) group of gradients, stacks the results into one small vector per device and, on
CUDA, starts an asynchronous copy of that vector into pinned host memory followed by an event.
Nothing on this path waits for the device: no ``.item()``, ``.numpy()``, ``float()`` or ``.cpu()``
of a CUDA tensor. The sonifier's worker thread later calls :func:`resolve_block`, which waits on
the events (off the training thread) and combines parameter norms into voice norms in float64
(``sqrt(sum of squares)``), giving the norms of many steps as one array.
"""

from __future__ import annotations

import bisect
import math
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, GradsonicWarning
from .voices import DEFAULT_MAX_VOICES, Grouping, ParamInfo, Selection, describe, unwrap_model


@dataclass(frozen=True)
class StepRecord:
    """The norms of one optimizer step.

    ``norms`` is float32 ``[n_voices]`` in voice order; a voice with no gradient this step (not
    updated by the optimizer that stepped, frozen, unused) has ``missing[i] = True`` and
    ``norms[i] = nan``. ``nonfinite[i]`` marks a voice whose gradient norm is NaN or +-Inf (it
    sounds as the alarm). ``skipped`` marks a step a ``GradScaler`` skipped because of inf/NaN
    gradients: the whole step sounds as the alarm. ``accents[i]`` holds voice ``i``'s accent
    bits (:data:`gradsonic.accents.SPIKE` 1, :data:`~gradsonic.accents.COLLAPSE` 2; 0 = none).
    """

    step: int
    norms: np.ndarray
    missing: np.ndarray
    layer_names: tuple[str, ...]
    skipped: bool = False  # the optimizer did not apply this step (AMP found inf/NaN)
    accents: np.ndarray | None = None
    nonfinite: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nonfinite", ~np.isfinite(self.norms) & ~self.missing)
        if self.accents is None:
            object.__setattr__(self, "accents", np.zeros(len(self.norms), dtype=np.uint8))


class PendingNorms:
    """Norms of one step on their way to the host; resolved on the worker thread.

    ``parts`` hold norms of the plan's parameters (positions into ``voice_of``); the worker
    combines them into one norm per voice.
    """

    __slots__ = ("step", "parts", "voice_of", "guard_of", "layer_names", "skipped", "found_inf",
                 "time", "scalars")

    def __init__(self, step: int, parts: list[tuple[np.ndarray, torch.Tensor, Any, Any]],
                 plan: "_Plan", layer_names: tuple[str, ...], skipped: bool = False,
                 found_inf: tuple[torch.Tensor, Any] | None = None) -> None:
        self.step = step
        self.parts = parts
        self.voice_of = plan.voice_of
        self.guard_of = plan.guard_of
        self.layer_names = layer_names
        self.skipped = skipped
        self.found_inf = found_inf  # a fused optimizer's skip flag, on its way to the host
        self.time = time.monotonic()
        self.scalars: dict[str, Any] | None = None  # son.log() values for this step

    def gather(self, values: np.ndarray, present: np.ndarray) -> None:
        """Write this step's parameter norms into ``values`` and mark them in ``present``,
        waiting for the device (on the worker thread)."""
        for positions, vec, event, reduced in self.parts:
            if reduced is not None:  # sharded: [squared norms, flags] summed over the shards
                reduced.wait()
            if event is not None:
                event.synchronize()
            if reduced is None:
                values[positions] = vec.numpy()
                present[positions] = True
                continue
            summed = vec.numpy()
            n = len(positions)
            values[positions] = np.sqrt(summed[:n])
            present[positions] = summed[n:] > 0
        if self.found_inf is not None:
            host, event = self.found_inf
            if event is not None:
                event.synchronize()
            self.skipped = self.skipped or bool(host.item() != 0)

    def wait(self) -> None:
        """Complete this step's collectives (silent ranks of a sharded run call this)."""
        for _, _, _, reduced in self.parts:
            if reduced is not None:
                reduced.wait()


def resolve_block(pending: Sequence[PendingNorms]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Norms ``[steps, voices]`` float32, the missing mask of that shape, skipped ``[steps]``.

    Every step of the block must have the same voices (the worker splits blocks where voices
    were added). Parameter norms are combined into voice norms for the whole block at once, in
    float64 (squares of float32 norms above ~1.8e19 would overflow in float32)."""
    n_steps, n_voices = len(pending), len(pending[0].layer_names)
    norms = np.full((n_steps, n_voices), np.nan, dtype=np.float32)
    missing = np.ones((n_steps, n_voices), dtype=bool)
    start = 0
    for i in range(1, n_steps + 1):  # runs of steps from the same plan (usually the whole block)
        if i == n_steps or pending[i].voice_of is not pending[start].voice_of:
            _combine(pending[start:i], norms[start:i], missing[start:i])
            start = i
    skipped = np.fromiter((p.skipped for p in pending), dtype=bool, count=n_steps)
    return norms, missing, skipped


def _combine(pending: Sequence[PendingNorms], norms: np.ndarray, missing: np.ndarray) -> None:
    voice_of, guard_of = pending[0].voice_of, pending[0].guard_of
    n_heard = len(voice_of)
    width = n_heard + len(guard_of)
    values = np.zeros((len(pending), width), dtype=np.float64)
    present = np.zeros((len(pending), width), dtype=bool)
    for i, p in enumerate(pending):
        p.gather(values[i], present[i])
    if len(guard_of):  # a non-finite gradient outside the voices: an alarm on its nearest voice
        rows, cols = np.nonzero(present[:, n_heard:] & ~np.isfinite(values[:, n_heard:]))
        values, present = values[:, :n_heard], present[:, :n_heard]
    if n_heard:
        _voice_norms(voice_of, values, present, norms, missing)
    if len(guard_of) and len(rows):
        norms[rows, guard_of[cols]] = np.nan
        missing[rows, guard_of[cols]] = False


def _voice_norms(voice_of: np.ndarray, values: np.ndarray, present: np.ndarray,
                 norms: np.ndarray, missing: np.ndarray) -> None:
    if len(np.unique(voice_of)) == len(voice_of):  # one parameter per voice: no sums
        norms[:, voice_of] = _float32(np.where(present, values, np.nan))
        missing[:, voice_of] = ~present
        return
    order = np.argsort(voice_of, kind="stable")  # parameters of a voice side by side
    voices, starts = np.unique(voice_of[order], return_index=True)
    squares = np.where(present, np.square(values), 0.0)[:, order]
    counts = np.add.reduceat(present[:, order].astype(np.intp), starts, axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.add.reduceat(squares, starts, axis=1)  # inf stays inf, NaN stays NaN
        norms[:, voices] = _float32(np.where(counts > 0, np.sqrt(sums), np.nan))
    missing[:, voices] = counts == 0


F32_MAX = float(np.finfo(np.float32).max)


def _float32(values: np.ndarray) -> np.ndarray:
    """Float64 norms as float32: a finite norm beyond float32's range is stored as its largest
    value (an over-range tone, never the NaN/Inf alarm); NaN and Inf stay as they are."""
    with np.errstate(invalid="ignore"):
        return np.where(values > F32_MAX, np.where(np.isinf(values), values, F32_MAX),
                        values).astype(np.float32)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _finite_or_wide(vec: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Redo in float64 the CPU norms that overflowed float32 although the gradient is finite.

    A float32 sum of squares overflows once a norm passes ~1.8e19; on CPU checking costs one
    small reduction (no device to wait for). A finite norm beyond float32's range (~3.4e38) is
    stored as float32's largest value. On CUDA the check would synchronise the training thread,
    so there a norm past ~1.8e19 reads as +inf (an alarm).
    """
    if not vec.is_cpu or math.isfinite(vec.numpy().sum(dtype=np.float64)):
        return vec  # (a float64 sum: ~1 us, a quarter of torch.isfinite(...).all())
    out = vec.clone()
    for i in torch.nonzero(~torch.isfinite(vec)).flatten().tolist():
        wide = float(torch.linalg.vector_norm(_dense(grads[i]), dtype=torch.float64))
        out[i] = min(wide, F32_MAX) if math.isfinite(wide) else wide
    return out


def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """One fused L2 norm per tensor (all on one device), as a float32 vector on that device."""
    if grads[0].dtype in _LOW_PRECISION:  # compute in float32: a float16 norm overflows at 65504
        try:
            out = torch._foreach_norm(grads, 2, dtype=torch.float32)
        except TypeError:  # torch < 2.3 has no dtype argument
            out = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
    else:
        out = torch._foreach_norm(grads, 2)
    vec = torch.stack(out) if len(out) > 1 else out[0].reshape(1)
    return _finite_or_wide(vec if vec.dtype == torch.float32 else vec.float(), grads)


_STACK_MAX_NUMEL = 1 << 16  # stack CPU weights up to 256 KB (float32) ...
_STACK_MIN_TENSORS = 4  # ... when at least this many share a shape


def _stacked_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """Norms of same-shaped dense tensors in one op over their stack (float32 vector)."""
    if grads[0].layout != torch.strided:
        raise RuntimeError("sparse gradient: use the general path")
    dims = tuple(range(1, grads[0].dim() + 1))
    vec = torch.linalg.vector_norm(torch.stack(grads), dim=dims, dtype=torch.float32)
    return _finite_or_wide(vec, grads)


def _dense(g: torch.Tensor) -> torch.Tensor:
    # Sparse gradients (e.g. nn.Embedding(sparse=True)): the norm of the stored values.
    return g.coalesce().values() if g.is_sparse else g


def _to_host(positions: np.ndarray, vec: torch.Tensor, work: Any = None
             ) -> tuple[np.ndarray, torch.Tensor, Any, Any]:
    """Start moving a norm vector to the host without waiting for the device."""
    event = None
    if vec.device.type == "cuda":
        host = vec.to("cpu", non_blocking=True)  # lands in pinned memory
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(vec.device))
        return positions, host, event, work
    if vec.device.type != "cpu":
        vec = vec.to("cpu")  # other backends: a plain copy
    return positions, vec, event, work


def _dtensor_type() -> Any:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4 or no distributed support
        return None
    return DTensor


def _local(g: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; any other tensor as it is."""
    to_local = getattr(g, "to_local", None)
    return to_local() if to_local is not None else g


def _unscale(vec: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return vec
    return vec / scale.to(vec.device, torch.float32, non_blocking=True)


def _flag_to_host(flag: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start moving a device scalar (a skip flag) to the host without waiting for it."""
    flag = flag.detach().reshape(-1)[:1]
    if flag.device.type == "cuda":
        host = flag.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(flag.device))
        return host, event
    return flag.to("cpu", copy=True), None


def _closest(placed: list[tuple[int, int]], k: int) -> int:
    """The voice of the entry of ``placed`` ((model position, voice), sorted) nearest ``k``."""
    if not placed:
        return 0
    j = bisect.bisect_left(placed, (k, -1))
    near = [placed[i] for i in (j - 1, j) if 0 <= i < len(placed)]
    return min(near, key=lambda e: (abs(e[0] - k), e[0]))[1]


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


class _Plan:
    """How to read the norms of one list of parameters (an optimizer's, or the model's).

    Built when the list changes. ``params`` are the ones read: first the heard ones, then the
    *guards* - trainable parameters outside every voice (biases, layers left out of
    ``layers=``), read only so that a NaN/Inf gradient there is an alarm on the nearest voice.
    ``voice_of[i]`` is the voice of heard ``params[i]``, ``guard_of[j]`` the voice that sounds
    guard ``j``'s alarm. ``idle`` are heard parameters that had neither ``requires_grad`` nor a
    gradient when the plan was built (frozen layers): the first gradient one of them gets
    rebuilds the plan, so a layer unfrozen later is heard. ``reduce`` lists the sharded
    parameters (FSDP, HSDP, DTensor) by the process groups their squared norms are summed over.
    """

    __slots__ = ("sig", "params", "voice_of", "guard_of", "groups", "fast", "idle", "reduce",
                 "names", "sharded")

    def __init__(self, sig: tuple[int, ...], params: list[nn.Parameter], voice_of: list[int],
                 guard_of: list[int], idle: list[nn.Parameter],
                 reduce: list[tuple[np.ndarray, list[int], tuple[Any, ...]]],
                 names: dict[int, list[str]]) -> None:
        self.sig = sig
        self.params = params
        self.voice_of = np.asarray(voice_of, dtype=np.intp)
        self.voice_of.setflags(write=False)
        self.guard_of = np.asarray(guard_of, dtype=np.intp)
        self.guard_of.setflags(write=False)
        self.idle = idle
        self.reduce = reduce
        self.names = names  # voice -> the names of its parameters in this plan
        # Read by _collect_sharded: gradients summed over process groups, or DTensors (whose
        # local shard may be the whole gradient: HSDP with one shard per replica)
        self.sharded = any(groups for _, _, groups in reduce) or any(
            hasattr(p, "to_local") for p in params)
        self.fast = bool(params)
        # The plan for the common step: one entry per (device, dtype) group, reduced with one
        # fused _foreach_norm - except on CPU, where foreach kernels loop over tensors in C++
        # (~4 us each): there, same-shaped small weights are stacked and reduced in one op
        # (1,000 32x32 weights: 0.9 ms instead of 3.8 ms).
        by_group: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(params):
            by_group.setdefault((p.device, p.dtype), []).append(i)
        self.groups: list[tuple[np.ndarray, list[int], bool]] = []  # (positions, idx, stacked)
        for (device, _), idx in by_group.items():
            rest = idx
            if device.type == "cpu":
                shapes: dict[tuple[int, ...], list[int]] = {}
                for i in idx:
                    if params[i].numel() <= _STACK_MAX_NUMEL:
                        shapes.setdefault(tuple(params[i].shape), []).append(i)
                stacked = [same for same in shapes.values() if len(same) >= _STACK_MIN_TENSORS]
                in_stacks = {i for same in stacked for i in same}
                for same in stacked:
                    self.groups.append((np.asarray(same, dtype=np.intp), same, True))
                rest = [i for i in idx if i not in in_stacks]
            if rest:
                self.groups.append((np.asarray(rest, dtype=np.intp), rest, False))


class _Reduced:
    """The all-reduce(s) of one vector ``[squared norms..., has-gradient flags...]``."""

    __slots__ = ("works",)

    def __init__(self, works: list[Any]) -> None:
        self.works = works

    def wait(self) -> None:
        for w in self.works:
            w.wait()
        self.works = []


class NormTap:
    """Maps the parameters being updated to voices and collects their norms, fused.

    The common case - every heard parameter has a dense gradient, as when the plan was built -
    costs one ``_foreach_norm`` + ``stack`` per (device, dtype) group and no per-parameter Python
    work beyond reading ``.grad``. Anything else (missing or sparse gradients, parameters moved
    across devices) takes the general path, which groups per step.
    """

    def __init__(self, model: nn.Module, layers: Sequence[Any] | None,
                 voices: Any = DEFAULT_MAX_VOICES) -> None:
        self.model = unwrap_model(model)
        self._fsdp1 = _fsdp1_groups(self.model)
        self.selection = Selection(self.model, layers)
        # Grouped over every layer that could be trained, frozen ones too: a layer unfrozen
        # later joins its group, so the voice budget holds for the whole run.
        self.grouping = Grouping(self.selection.candidates, voices)
        self.voices: list[str] = list(dict.fromkeys(
            self.grouping.group_of(v) for v in self.selection.initial))
        self._voice_index = {v: i for i, v in enumerate(self.voices)}
        self.layer_names = tuple(self.voices)
        #: for each voice, the qualified names of the parameters it covers: those of every
        #: optimizer heard so far (before the first step: the model's trainable ones)
        self.voice_params: list[tuple[str, ...]] = [() for _ in self.voices]
        self._plans: weakref.WeakKeyDictionary[Any, _Plan] = weakref.WeakKeyDictionary()
        self._model_plan: _Plan | None = None
        self._model_stepped = False  # son.step() by hand has read the model's parameters
        self._order: dict[str, int] = {}
        self._dtensor = _dtensor_type()
        self._warned_outside = False
        self._warned_partial = False
        infos = describe(self.model)
        self._plan_for(list(self.model.parameters()), None, infos)  # voice_params, sharded
        complex_ = [i.name for i in infos if i.param.requires_grad and i.param.is_complex()]
        if complex_ and self.selection.grows:
            warnings.warn(f"gradsonic: {len(complex_)} complex parameter(s) cannot be heard "
                          f"(real gradient norms only): {complex_[:8]}", GradsonicWarning,
                          stacklevel=4)

    @property
    def sharded(self) -> bool:
        """FSDP (fully_shard, FullyShardedDataParallel) / DTensor parameters: every rank holds a
        shard of a gradient, and every rank must take part in each step's all-reduce."""
        plans = [self._model_plan, *self._plans.values()]
        return any(p is not None and p.sharded for p in plans)

    # -- planning ---------------------------------------------------------------------------

    def _params_of(self, optimizer: Any) -> list[nn.Parameter]:
        if optimizer is None:
            return list(self.model.parameters())
        return [p for group in optimizer.param_groups for p in group["params"]]

    def _plan(self, optimizer: Any) -> _Plan:
        params = self._params_of(optimizer)
        sig = tuple(map(id, params))
        if optimizer is None:
            plan = self._model_plan
            if not self._model_stepped:
                self._model_stepped = True
                self._merge_names()
        else:
            plan = self._plans.get(optimizer)
        if plan is not None and plan.sig == sig:
            if not plan.idle:
                return plan
            for p in plan.idle:
                if p.grad is not None:
                    break
            else:
                return plan
        return self._plan_for(params, optimizer)

    def _plan_for(self, params: list[nn.Parameter], optimizer: Any,
                  infos: list[ParamInfo] | None = None) -> _Plan:
        infos = describe(self.model) if infos is None else infos
        by_id = {id(i.param): i for i in infos}
        self._order = {i.name: k for k, i in enumerate(infos)}
        outside = [p for p in params if id(p) not in by_id]
        if outside:
            by_id.update(self._name_outside(params, infos, outside))
        heard, voice_of, idle = [], [], []
        guards: list[tuple[nn.Parameter, ParamInfo]] = []
        names: dict[int, list[str]] = {}
        for p in params:
            info = by_id[id(p)]
            voice = self.selection.voice_of(info)
            v = None
            if voice is not None:
                voice = self.grouping.group_of(voice)
                if not (p.requires_grad or p.grad is not None):
                    idle.append(p)
                    continue
                v = self._voice_index.get(voice)
                if v is None and self.selection.grows:
                    v = self._add_voice(voice)
            if v is None:
                if (p.requires_grad or p.grad is not None) and not p.is_complex():
                    guards.append((p, info))  # not heard; its NaN/Inf still is an alarm
                continue
            heard.append(p)
            voice_of.append(v)
            names.setdefault(v, []).append(info.name)
        guard_of = self._nearest_voices([i for _, i in guards], heard, voice_of, by_id, infos)
        read = heard + [p for p, _ in guards]
        plan = _Plan(tuple(map(id, params)), read, voice_of, guard_of, idle,
                     self._reduce_groups(read), names)
        if optimizer is None:
            self._model_plan = plan
        else:
            self._plans[optimizer] = plan
        self._merge_names()
        return plan

    def _merge_names(self) -> None:
        """``voice_params``: the union of what every optimizer heard so far updates (and the
        model's parameters, before any step or once ``son.step()`` read them by hand)."""
        plans = list(self._plans.values())
        if self._model_plan is not None and (self._model_stepped or not plans):
            plans.append(self._model_plan)
        merged: list[dict[str, None]] = [{} for _ in self.voices]
        for plan in plans:
            for v, ns in plan.names.items():
                merged[v].update(dict.fromkeys(ns))
        last = len(self._order)
        self.voice_params = [tuple(sorted(m, key=lambda n: self._order.get(n, last)))
                             for m in merged]

    def _nearest_voices(self, guards: list[ParamInfo], heard: list[nn.Parameter],
                        voice_of: list[int], by_id: dict[int, ParamInfo],
                        infos: list[ParamInfo]) -> list[int]:
        """The voice that sounds each guard's alarm: its module's voice, else the voice of the
        closest module above it, else that of the nearest heard parameter in model order."""
        if not guards:
            return []
        where = {id(i.param): k for k, i in enumerate(infos)}
        placed = sorted((where[id(p)], v) for p, v in zip(heard, voice_of) if id(p) in where)
        if not placed:  # this optimizer updates no voice: the nearest of all the voices
            placed = sorted((k, self._voice_index[self.grouping.group_of(v)])
                            for k, i in enumerate(infos)
                            for v in [self.selection.voice_of(i)]
                            if v is not None and self.grouping.group_of(v) in self._voice_index)
        out = []
        for info in guards:
            v = self._voice_above(info)
            out.append(v if v is not None else _closest(placed, where.get(id(info.param), 0)))
        return out

    def _voice_above(self, info: ParamInfo) -> int | None:
        parts = info.owner.split(".") if info.owner else []
        for n in range(len(parts), 0, -1):
            name = ".".join(parts[:n])
            for candidate in (name, self.grouping.group_of(name)):
                v = self._voice_index.get(candidate)
                if v is not None:
                    return v
        return None

    def _reduce_groups(self, params: list[nn.Parameter]
                       ) -> list[tuple[np.ndarray, list[int], tuple[Any, ...]]]:
        """Parameters by the process groups their squared norms are summed over: the mesh
        dimensions a DTensor is sharded on (not those it is replicated on: HSDP's replicas hold
        the same gradient), or an FSDP1 module's group; ``()`` for whole local gradients."""
        by_key: dict[tuple[int, ...], tuple[list[int], tuple[Any, ...]]] = {}
        for i, p in enumerate(params):
            groups = self._groups_of(p)
            entry = by_key.setdefault(tuple(map(id, groups)), ([], groups))
            entry[0].append(i)
        return [(np.asarray(idx, dtype=np.intp), idx, groups) for idx, groups in by_key.values()]

    def _groups_of(self, p: nn.Parameter) -> tuple[Any, ...]:
        if self._dtensor is not None and isinstance(p, self._dtensor):
            mesh = p.device_mesh
            if any(pl.is_partial() for pl in p.placements) and not self._warned_partial:
                self._warned_partial = True
                warnings.warn("gradsonic: a parameter with a Partial DTensor placement is heard "
                              "from its local part only", GradsonicWarning, stacklevel=6)
            return tuple(mesh.get_group(d) for d, pl in enumerate(p.placements)
                         if pl.is_shard() and mesh.size(d) > 1)
        group = self._fsdp1.get(id(p))
        return (group,) if group is not None else ()

    def _add_voice(self, name: str) -> int:
        self._voice_index[name] = len(self.voices)
        self.voices.append(name)
        self.voice_params.append(())
        self.layer_names = tuple(self.voices)
        return len(self.voices) - 1

    def _name_outside(self, params: list[nn.Parameter], infos: list[ParamInfo],
                      outside: list[nn.Parameter]) -> dict[int, ParamInfo]:
        """Names for parameters an optimizer updates that are not in the model.

        A copy of the model (``copy.deepcopy``) trained instead of it has the model's parameters'
        shapes in the same order: those take the model's names. Anything else is named by its
        place in the optimizer, ``param_groups.G.I``, a voice of its own. Warned once.
        """
        out: dict[int, ParamInfo] = {}
        model_params = [i for i in infos]
        positional = len(params) == len(model_params) and all(
            p.shape == i.param.shape for p, i in zip(params, model_params))
        where: dict[int, int] = {id(p): k for k, p in enumerate(params)}
        for p in outside:
            k = where[id(p)]
            if positional:
                i = model_params[k]
                out[id(p)] = ParamInfo(i.name, p, i.owner, i.attr, i.voice, i.bias)
            else:
                name = f"param_groups.{k}"
                out[id(p)] = ParamInfo(name, p, "", name, name, False)
        if not self._warned_outside:
            self._warned_outside = True
            how = ("heard under the names of the model's parameters of the same place and shape"
                   if positional else "each heard as a voice named by its place in the optimizer")
            warnings.warn(
                f"gradsonic: the optimizer updates {len(outside)} parameter(s) that are not in the "
                f"model gradsonic is attached to (a copy of it?); they are {how}. Attach the "
                "sonifier to the model you train.", GradsonicWarning, stacklevel=6)
        return out

    def adopt_voices(self, recorded: tuple[str, ...], where: Any) -> tuple[str, ...]:
        """Continue a recorded run: take its voices (in its order) if this model's are among
        them, else raise naming the difference."""
        current = tuple(self.voices)
        if recorded == current:
            return current
        if not (self.selection.grows and set(current) <= set(recorded)):
            gone = [v for v in recorded if v not in current]
            new = [v for v in current if v not in recorded]
            raise ConfigError(
                f"resume: {str(where)!r} has voices {list(recorded)}; this model has "
                f"{list(current)} (recorded only: {gone}; new: {new}). Resume with the same "
                "model and layers=, or start a new run")
        self.voices = list(recorded)
        self._voice_index = {v: i for i, v in enumerate(self.voices)}
        self.voice_params = [() for _ in self.voices]
        self.layer_names = tuple(self.voices)
        self._plans = weakref.WeakKeyDictionary()
        self._plan_for(list(self.model.parameters()), None)
        return self.layer_names

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self, step: int, optimizer: Any = None, skipped: bool = False,
                scale: torch.Tensor | None = None,
                found_inf: torch.Tensor | None = None) -> PendingNorms:
        """Norms of what ``optimizer`` is about to update (``None``: the model's parameters).

        ``scale``: the gradients are still multiplied by this (a ``GradScaler``'s scale, for a
        fused optimizer that unscales inside its step): the norms are divided by it, on the
        device. ``found_inf``: a device tensor, non-zero when that step is skipped (read on the
        worker thread)."""
        plan = self._plan(optimizer)
        inf = None if found_inf is None else _flag_to_host(found_inf)
        if plan.sharded:
            return self._collect_sharded(plan, step, skipped, scale, inf)
        grads = [p.grad for p in plan.params]
        if plan.fast:
            for g in grads:
                if g is None:
                    break
            else:
                try:
                    parts = []
                    for pos, idx, stacked in plan.groups:
                        gs = grads if len(idx) == len(grads) else [grads[i] for i in idx]
                        vec = _stacked_norms(gs) if stacked else _norms(gs)
                        parts.append(_to_host(pos, _unscale(vec, scale)))
                    return PendingNorms(step, parts, plan, self.layer_names, skipped, inf)
                except RuntimeError:  # sparse gradients, weights moved across devices, ...
                    plan.fast = False
        return self._collect_general(plan, step, grads, skipped, scale, inf)

    def _collect_sharded(self, plan: _Plan, step: int, skipped: bool,
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
                    vec = _norms([_dense(_local(grads[k])) for k in have])
                    parts.append(_to_host(positions[have], _unscale(vec, scale)))
                continue
            have = [k for k, g in enumerate(grads) if g is not None]
            device = next((_local(g).device for g in grads if g is not None),
                          plan.params[idx[0]].device)
            if device.type == "meta":
                device = torch.device("cpu")
            vec = torch.zeros(2 * len(idx), dtype=torch.float64, device=device)
            if have:
                local = [_local(grads[k]) for k in have]
                nonempty = [k for k, g in zip(have, local) if g.numel()]
                if nonempty:
                    norms = _unscale(_norms([_dense(_local(grads[k])) for k in nonempty]), scale)
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
            reduced = _Reduced(works)
            if device.type == "cuda":
                reduced.wait()  # orders the current stream after the all-reduce; the host goes on
            parts.append(_to_host(positions, vec, reduced))
        return PendingNorms(step, parts, plan, self.layer_names, skipped, inf)

    def _collect_general(self, plan: _Plan, step: int, grads: list[torch.Tensor | None],
                         skipped: bool, scale: torch.Tensor | None, inf: Any) -> PendingNorms:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[int], list[torch.Tensor]]] = {}
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = _dense(g)
            entry = groups.setdefault((g.device, g.dtype), ([], []))
            entry[0].append(i)
            entry[1].append(g)
        by_device: dict[torch.device, tuple[list[int], list[torch.Tensor]]] = {}
        for (device, _), (idx, gs) in groups.items():
            entry2 = by_device.setdefault(device, ([], []))
            entry2[0].extend(idx)
            entry2[1].append(_norms(gs))
        parts = [_to_host(np.asarray(idx, dtype=np.intp),
                          _unscale(vecs[0] if len(vecs) == 1 else torch.cat(vecs), scale))
                 for idx, vecs in by_device.values()]
        return PendingNorms(step, parts, plan, self.layer_names, skipped, inf)

    # -- what is heard ----------------------------------------------------------------------

    def summary(self) -> str:
        """A table of the voices and the trainable parameters not heard, with the reason."""
        infos = describe(self.model)
        heard = {n for names in self.voice_params for n in names}
        numel = {i.name: i.param.numel() for i in infos}
        layers: dict[str, set[str]] = {}  # voice -> the layer voices grouped in it
        for i in infos:
            fine = self.selection.voice_of(i) if i.name in heard else None
            if fine is not None:
                layers.setdefault(self.grouping.group_of(fine), set()).add(fine)
        rows = [(str(k), v, str(len(layers.get(v, ()))), ", ".join(ns) if ns else "(none yet)",
                 f"{sum(numel.get(n, 0) for n in ns):,}")
                for k, (v, ns) in enumerate(zip(self.voices, self.voice_params))]
        head = ("#", "voice", "layers", "parameters", "elements")
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(5)]
        widths[3] = min(widths[3], 60)

        def line(r: tuple[str, ...]) -> str:
            cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]),
                     (r[3] if len(r[3]) <= 60 else r[3][:57] + "...").ljust(widths[3]),
                     r[4].rjust(widths[4])]
            return "  ".join(cells).rstrip()

        trainable = [i for i in infos if i.param.requires_grad]
        missed = [i for i in trainable if i.name not in heard]
        weights = [i for i in trainable if not i.bias]
        n_heard = sum(i.param.numel() for i in weights if i.name in heard)
        n_all = sum(i.param.numel() for i in weights)
        out = [f"gradsonic: {len(self.voices)} voices hear {n_heard:,} of {n_all:,} trainable "
               f"non-bias parameter elements ({100.0 * n_heard / max(n_all, 1):.1f}%)",
               line(head), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in rows]
        if missed:
            out.append(f"not heard ({len(missed)} trainable parameters, "
                       f"{sum(i.param.numel() for i in missed):,} elements):")
            reasons: dict[str, list[ParamInfo]] = {}
            for i in missed:
                reasons.setdefault(self.selection.why_not(i), []).append(i)
            for why, items in reasons.items():
                names = ", ".join(i.name for i in items[:6]) + (", ..." if len(items) > 6 else "")
                out.append(f"  {names} ({sum(i.param.numel() for i in items):,} elements): {why}")
        else:
            out.append("not heard: none (every trainable parameter is in a voice)")
        return "\n".join(out)

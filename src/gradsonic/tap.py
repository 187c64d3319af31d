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

    __slots__ = ("step", "parts", "voice_of", "layer_names", "skipped", "time", "scalars")

    def __init__(self, step: int, parts: list[tuple[np.ndarray, torch.Tensor, Any, Any]],
                 voice_of: np.ndarray, layer_names: tuple[str, ...],
                 skipped: bool = False) -> None:
        self.step = step
        self.parts = parts
        self.voice_of = voice_of
        self.layer_names = layer_names
        self.skipped = skipped
        self.time = time.monotonic()
        self.scalars: dict[str, Any] | None = None  # son.log() values for this step

    def gather(self, values: np.ndarray, present: np.ndarray) -> None:
        """Write this step's parameter norms into ``values`` and mark them in ``present``,
        waiting for the device (on the worker thread)."""
        for positions, vec, event, work in self.parts:
            if work is not None:  # sharded gradients: the all-reduce of squared local norms
                work.wait()
                vec = vec.sqrt()
            if event is not None:
                event.synchronize()
            values[positions] = vec.numpy()
            present[positions] = True

    def wait(self) -> None:
        """Complete this step's collectives (silent ranks of a sharded run call this)."""
        for _, _, _, work in self.parts:
            if work is not None:
                work.wait()


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
    voice_of = pending[0].voice_of
    values = np.zeros((len(pending), len(voice_of)), dtype=np.float64)
    present = np.zeros((len(pending), len(voice_of)), dtype=bool)
    for i, p in enumerate(pending):
        p.gather(values[i], present[i])
    if not len(voice_of):
        return
    if len(np.unique(voice_of)) == len(voice_of):  # one parameter per voice: no sums
        norms[:, voice_of] = np.where(present, values, np.nan)
        missing[:, voice_of] = ~present
        return
    order = np.argsort(voice_of, kind="stable")  # parameters of a voice side by side
    voices, starts = np.unique(voice_of[order], return_index=True)
    squares = np.where(present, np.square(values), 0.0)[:, order]
    counts = np.add.reduceat(present[:, order].astype(np.intp), starts, axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.add.reduceat(squares, starts, axis=1)  # inf stays inf, NaN stays NaN
        norms[:, voices] = np.where(counts > 0, np.sqrt(sums), np.nan)
    missing[:, voices] = counts == 0


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _finite_or_wide(vec: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Redo in float64 the CPU norms that overflowed float32 although the gradient is finite.

    A float32 sum of squares overflows once a norm passes ~1.8e19; on CPU checking costs one
    small reduction (no device to wait for). On CUDA the check would synchronise the training
    thread, so there a norm past ~1.8e19 reads as +inf (an alarm).
    """
    if not vec.is_cpu or math.isfinite(vec.numpy().sum(dtype=np.float64)):
        return vec  # (a float64 sum: ~1 us, a quarter of torch.isfinite(...).all())
    out = vec.clone()
    for i in torch.nonzero(~torch.isfinite(vec)).flatten().tolist():
        out[i] = torch.linalg.vector_norm(grads[i], dtype=torch.float64).float()
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




class _Plan:
    """How to read the norms of one list of parameters (an optimizer's, or the model's).

    Built when the list changes; ``params`` are the ones heard, ``voice_of[i]`` the voice of
    ``params[i]``. ``idle`` are heard parameters that had neither ``requires_grad`` nor a gradient
    when the plan was built (frozen layers): the first gradient one of them gets rebuilds the plan,
    so a layer unfrozen later is heard.
    """

    __slots__ = ("sig", "params", "voice_of", "groups", "fast", "idle", "sharded")

    def __init__(self, sig: tuple[int, ...], params: list[nn.Parameter], voice_of: list[int],
                 idle: list[nn.Parameter], sharded: bool) -> None:
        self.sig = sig
        self.params = params
        self.voice_of = np.asarray(voice_of, dtype=np.intp)
        self.voice_of.setflags(write=False)
        self.idle = idle
        self.sharded = sharded
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


_MODEL = object()  # plan key of son.step() by hand: the model's own parameters


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
        self.selection = Selection(self.model, layers)
        self.grouping = Grouping(self.selection.initial, voices)
        self.voices: list[str] = list(dict.fromkeys(
            self.grouping.group_of(v) for v in self.selection.initial))
        self._voice_index = {v: i for i, v in enumerate(self.voices)}
        self.layer_names = tuple(self.voices)
        #: for each voice, the qualified names of the parameters it covered when last planned
        self.voice_params: list[tuple[str, ...]] = [() for _ in self.voices]
        self._plans: weakref.WeakKeyDictionary[Any, _Plan] = weakref.WeakKeyDictionary()
        self._model_plan: _Plan | None = None
        self._dtensor = _dtensor_type()
        self._warned_outside = False
        self._scales: dict[tuple[Any, tuple[bool, ...]], torch.Tensor] = {}
        infos = describe(self.model)
        self._plan_for(list(self.model.parameters()), None, infos)  # voice_params, sharded
        complex_ = [i.name for i in infos if i.param.requires_grad and i.param.is_complex()]
        if complex_ and self.selection.grows:
            warnings.warn(f"gradsonic: {len(complex_)} complex parameter(s) cannot be heard "
                          f"(real gradient norms only): {complex_[:8]}", GradsonicWarning,
                          stacklevel=4)

    @property
    def sharded(self) -> bool:
        """FSDP2 (fully_shard) / DTensor parameters: every rank holds a shard of each gradient."""
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
        plan = self._model_plan if optimizer is None else self._plans.get(optimizer)
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
        outside = [p for p in params if id(p) not in by_id]
        if outside:
            by_id.update(self._name_outside(params, infos, outside))
        heard, voice_of, idle = [], [], []
        names: dict[int, list[str]] = {}
        for p in params:
            info = by_id[id(p)]
            voice = self.selection.voice_of(info)
            if voice is None:
                continue
            voice = self.grouping.group_of(voice)
            if not (p.requires_grad or p.grad is not None):
                idle.append(p)
                continue
            v = self._voice_index.get(voice)
            if v is None:
                if not self.selection.grows:
                    continue
                v = self._add_voice(voice)
            heard.append(p)
            voice_of.append(v)
            names.setdefault(v, []).append(info.name)
        for v, ns in names.items():
            self.voice_params[v] = tuple(ns)
        sharded = self._dtensor is not None and any(isinstance(p, self._dtensor) for p in heard)
        plan = _Plan(tuple(map(id, params)), heard, voice_of, idle, sharded)
        if optimizer is None:
            self._model_plan = plan
        else:
            self._plans[optimizer] = plan
        return plan

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
        by_name = dict(zip(self.voices, self.voice_params))
        self.voices = list(recorded)
        self._voice_index = {v: i for i, v in enumerate(self.voices)}
        self.voice_params = [by_name.get(v, ()) for v in self.voices]
        self.layer_names = tuple(self.voices)
        self._plans = weakref.WeakKeyDictionary()
        self._plan_for(list(self.model.parameters()), None)
        return self.layer_names

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self, step: int, optimizer: Any = None, skipped: bool = False) -> PendingNorms:
        """Norms of what ``optimizer`` is about to update (``None``: the model's parameters)."""
        plan = self._plan(optimizer)
        if plan.sharded:
            return self._collect_sharded(plan, step, skipped)
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
                        parts.append(_to_host(pos, _stacked_norms(gs) if stacked else _norms(gs)))
                    return PendingNorms(step, parts, plan.voice_of, self.layer_names, skipped)
                except RuntimeError:  # sparse gradients, weights moved across devices, ...
                    plan.fast = False
        return self._collect_general(plan, step, grads, skipped)

    def _collect_sharded(self, plan: _Plan, step: int, skipped: bool) -> PendingNorms:
        """Sharded gradients: norm = sqrt(sum over ranks of local squared norms).

        One fused norm over the local shards, one asynchronous all-reduce of an
        ``[n_params]`` vector. Every rank must call this at the same step (the sonifier's
        silent ranks do). Replicated (non-sharded) gradients are divided by the world size
        first so that the sum counts them once.
        """
        import torch.distributed as dist

        grads = [p.grad for p in plan.params]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return PendingNorms(step, [], plan.voice_of, self.layer_names, skipped)
        locals_, replicated = [], []
        for i in present:
            g = grads[i]
            if isinstance(g, self._dtensor):
                sharded = any(p.is_shard() for p in g.placements)
                g = g.to_local()
            else:
                sharded = False
            locals_.append(g)
            replicated.append(not sharded)
        sq = _norms(locals_).square()
        if any(replicated):
            key = (sq.device, tuple(replicated))
            scale = self._scales.get(key)
            if scale is None:  # built once: a host-to-device copy every step could stall
                scale = torch.tensor([1.0 / dist.get_world_size() if r else 1.0
                                      for r in replicated], dtype=sq.dtype).to(sq.device)
                self._scales[key] = scale
            sq = sq * scale
        work = dist.all_reduce(sq, op=dist.ReduceOp.SUM, async_op=True)
        positions = np.asarray(present, dtype=np.intp)
        if sq.device.type == "cuda":
            work.wait()  # orders the current stream after the all-reduce; the host goes on
            return PendingNorms(step, [_to_host(positions, sq.sqrt())], plan.voice_of,
                                self.layer_names, skipped)
        return PendingNorms(step, [_to_host(positions, sq, work)], plan.voice_of,
                            self.layer_names, skipped)

    def _collect_general(self, plan: _Plan, step: int, grads: list[torch.Tensor | None],
                         skipped: bool) -> PendingNorms:
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
                          vecs[0] if len(vecs) == 1 else torch.cat(vecs))
                 for idx, vecs in by_device.values()]
        return PendingNorms(step, parts, plan.voice_of, self.layer_names, skipped)

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

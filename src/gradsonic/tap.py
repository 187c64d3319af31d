"""Reading the gradient norms of the parameters an optimizer is about to update.

The training thread calls :meth:`NormTap.collect` once per optimizer step with that optimizer (or
``None`` for ``son.step()`` by hand, which reads the model). The tap looks at the parameters the
optimizer holds *now* - its ``param_groups``, so replaced layers, new parametrizations,
``add_param_group`` and unfreezing are heard - and maps each to its voice (:mod:`gradsonic.voices`).
That mapping is cached per optimizer and rebuilt only when the list of parameters changes (one
``tuple(map(id, ...))`` per step tells). Then it reads the norms as
:mod:`gradsonic.norms` describes (sharded gradients as :mod:`gradsonic.sharding` does), and the
worker thread combines them into voice norms.
"""

from __future__ import annotations

import bisect
import warnings
import weakref
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .sharding import Sharding
from .errors import ConfigError, GradsonicWarning
from .norms import (F32_MAX, PendingNorms, StepRecord, dense, flag_to_host, fused_norms,
                    resolve_block, stacked_norms, to_host, unscale, voice_grouping)
from .voices import DEFAULT_MAX_VOICES, Grouping, ParamInfo, Selection, describe, unwrap_model

__all__ = ["NormTap", "StepRecord", "PendingNorms", "resolve_block", "F32_MAX"]

# Stack CPU weights up to 16 KB (float32; where foreach's ~4 us per tensor outweighs the copy
# the stack makes) ... Larger ones read in place: stacking the 16 64K-element weights of a small
# transformer measured ~150 us more per step than reading them where they are.
_STACK_MAX_NUMEL = 1 << 12
_STACK_MIN_TENSORS = 4  # ... when at least this many share a shape


def _closest(placed: list[tuple[int, int]], k: int) -> int:
    """The voice of the entry of ``placed`` ((model position, voice), sorted) nearest ``k``."""
    if not placed:
        return 0
    j = bisect.bisect_left(placed, (k, -1))
    near = [placed[i] for i in (j - 1, j) if 0 <= i < len(placed)]
    return min(near, key=lambda e: (abs(e[0] - k), e[0]))[1]


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

    __slots__ = ("sig", "params", "voice_of", "voice_sums", "guard_of", "groups", "fast", "idle",
                 "reduce", "names", "sharded")

    def __init__(self, sig: tuple[int, ...], params: list[nn.Parameter], voice_of: list[int],
                 guard_of: list[int], idle: list[nn.Parameter],
                 reduce: list[tuple[np.ndarray, list[int], tuple[Any, ...]]],
                 names: dict[int, list[str]]) -> None:
        self.sig = sig
        self.params = params
        self.voice_of = np.asarray(voice_of, dtype=np.intp)
        self.voice_of.setflags(write=False)
        self.voice_sums = voice_grouping(self.voice_of)  # how parameters add up to voices
        self.guard_of = np.asarray(guard_of, dtype=np.intp)
        self.guard_of.setflags(write=False)
        self.idle = idle
        self.reduce = reduce
        self.names = names  # voice -> the names of its parameters in this plan
        # Read by Sharding.collect: gradients summed over process groups, or DTensors (whose
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
        self._sharding = Sharding(self.model)
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
        self._warned_outside = False
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

    def plan(self, optimizer: Any) -> None:
        """Plan ``optimizer``'s parameters now (when it is wrapped), so that ``voice_params``
        and ``summary()`` describe what it updates before its first step."""
        self._plan(optimizer)

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
                     self._sharding.reduce_groups(read), names)
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
        inf = None if found_inf is None else flag_to_host(found_inf)
        if plan.sharded:
            return self._sharding.collect(plan, step, self.layer_names, skipped, scale, inf)
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
                        vec = stacked_norms(gs) if stacked else fused_norms(gs)
                        parts.append(to_host(pos, unscale(vec, scale)))
                    return PendingNorms(step, parts, plan, self.layer_names, skipped, inf)
                except RuntimeError:  # sparse gradients, weights moved across devices, ...
                    plan.fast = False
        return self._collect_general(plan, step, grads, skipped, scale, inf)

    def _collect_general(self, plan: _Plan, step: int, grads: list[torch.Tensor | None],
                         skipped: bool, scale: torch.Tensor | None, inf: Any) -> PendingNorms:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[int], list[torch.Tensor]]] = {}
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = dense(g)
            entry = groups.setdefault((g.device, g.dtype), ([], []))
            entry[0].append(i)
            entry[1].append(g)
        by_device: dict[torch.device, tuple[list[int], list[torch.Tensor]]] = {}
        for (device, _), (idx, gs) in groups.items():
            entry2 = by_device.setdefault(device, ([], []))
            entry2[0].extend(idx)
            entry2[1].append(fused_norms(gs))
        parts = [to_host(np.asarray(idx, dtype=np.intp),
                          unscale(vecs[0] if len(vecs) == 1 else torch.cat(vecs), scale))
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
                why = (self.selection.why_not(i) if self.selection.voice_of(i) is None
                       or i.param.is_complex()
                       else "not updated by any optimizer heard so far (wrap it, or son.step())")
                reasons.setdefault(why, []).append(i)
            for why, items in reasons.items():
                names = ", ".join(i.name for i in items[:6]) + (", ..." if len(items) > 6 else "")
                out.append(f"  {names} ({sum(i.param.numel() for i in items):,} elements): {why}")
        else:
            out.append("not heard: none (every trainable parameter is in a voice)")
        return "\n".join(out)

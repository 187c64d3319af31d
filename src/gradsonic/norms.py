"""Gradient norms: read on the training thread, combined into voice norms on the worker.

The training thread issues one fused ``torch._foreach_norm`` per (device, dtype) group of
gradients (:func:`fused_norms`; on CPU same-shaped small weights are stacked instead,
:func:`stacked_norms`), stacks the results into one small vector per device and, on CUDA, starts
an asynchronous copy of that vector into pinned host memory followed by an event
(:func:`to_host`). Nothing on this path waits for the device: no ``.item()``, ``.numpy()``,
``float()`` or ``.cpu()`` of a CUDA tensor. The sonifier's worker thread later calls
:func:`resolve_block`, which waits on the events (off the training thread) and combines
parameter norms into voice norms in float64 (``sqrt(sum of squares)``), giving the norms of many
steps as one array. A NaN/Inf among the *guards* (trainable parameters outside every voice)
becomes an alarm on the voice the plan names for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

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

    __slots__ = ("step", "parts", "voice_of", "voice_sums", "guard_of", "layer_names", "skipped",
                 "found_inf", "time", "scalars")

    def __init__(self, step: int, parts: list[tuple[np.ndarray, torch.Tensor, Any, Any]],
                 plan: Any, layer_names: tuple[str, ...], skipped: bool = False,
                 found_inf: tuple[torch.Tensor, Any] | None = None) -> None:
        self.step = step
        self.parts = parts
        self.voice_of = plan.voice_of
        self.voice_sums = plan.voice_sums
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
                values[positions] = vec.tolist()  # (a list: ~5x cheaper than .numpy() cold)
                present[positions] = True
                continue
            summed = vec.numpy()  # (float32, as reduced: sqrt in float32 as before)
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
    norms = np.empty((n_steps, n_voices), dtype=np.float32)
    norms.fill(np.nan)
    missing = np.ones((n_steps, n_voices), dtype=bool)
    start = 0
    for i in range(1, n_steps + 1):  # runs of steps from the same plan (usually the whole block)
        if i == n_steps or pending[i].voice_of is not pending[start].voice_of:
            _combine(pending[start:i], norms[start:i], missing[start:i])
            start = i
    skipped = np.array([p.skipped for p in pending], dtype=bool)
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
        _voice_norms(voice_of, pending[0].voice_sums, values, present, norms, missing)
    if len(guard_of) and len(rows):
        norms[rows, guard_of[cols]] = np.nan
        missing[rows, guard_of[cols]] = False


def voice_grouping(voice_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """How a plan's parameters add up to voices: (order, voices, starts), or None when each
    parameter is its own voice. A plan works this out once, not once per block of steps."""
    if len(set(voice_of.tolist())) == len(voice_of):
        return None
    # (not np.unique: its first call imports numpy.ma, 30 ms holding the GIL)
    order = np.argsort(voice_of, kind="stable")  # parameters of a voice side by side
    ranked = voice_of[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    return order, ranked[starts], starts


def _voice_norms(voice_of: np.ndarray, grouping: Any, values: np.ndarray, present: np.ndarray,
                 norms: np.ndarray, missing: np.ndarray) -> None:
    if grouping is None:  # one parameter per voice: no sums
        norms[:, voice_of] = _float32(np.where(present, values, np.nan))
        missing[:, voice_of] = ~present
        return
    order, voices, starts = grouping
    squares = np.where(present, np.square(values), 0.0)[:, order]
    counts = np.add.reduceat(present[:, order].astype(np.intp), starts, axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.add.reduceat(squares, starts, axis=1)  # inf stays inf, NaN stays NaN
        norms[:, voices] = _float32(np.where(counts > 0, np.sqrt(sums), np.nan))
    missing[:, voices] = counts == 0


F32_MAX = float(np.finfo(np.float32).max)


def _float32(values: np.ndarray) -> np.ndarray:
    """Float64 norms as float32: a finite norm beyond float32's range is stored as its largest
    value (an over-range tone, never the NaN/Inf alarm); NaN and Inf stay as they are. (No
    np.errstate: comparing NaN raises no flag, and the first errstate after the worker slept
    cost ~80 us.)"""
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
    if not vec.is_cpu or all(map(math.isfinite, vec.tolist())):
        return vec  # (a few us; NumPy's sum measured ~120 us in a training loop: cold caches)
    out = vec.clone()
    for i in torch.nonzero(~torch.isfinite(vec)).flatten().tolist():
        wide = float(torch.linalg.vector_norm(dense(grads[i]), dtype=torch.float64))
        out[i] = min(wide, F32_MAX) if math.isfinite(wide) else wide
    return out


def fused_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """One fused L2 norm per tensor (all on one device), as a float32 vector on that device."""
    if grads[0].is_cpu and any(g.numel() > _CHUNKED_NUMEL and g.layout == torch.strided
                               for g in grads):
        return _cpu_norms(grads)
    if grads[0].dtype in _LOW_PRECISION:  # compute in float32: a float16 norm overflows at 65504
        try:
            out = torch._foreach_norm(grads, 2, dtype=torch.float32)
        except TypeError:  # torch < 2.3 has no dtype argument
            out = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
    else:
        out = torch._foreach_norm(grads, 2)
    vec = torch.stack(out) if len(out) > 1 else out[0].reshape(1)
    return _finite_or_wide(vec if vec.dtype == torch.float32 else vec.float(), grads)


# torch's float32 norm on CPU sums each SIMD lane sequentially: its relative error grows with the
# tensor (4e-5 at 2.4M elements, 1e-4 at 4.7M, 6.5e-4 at 16.8M). Tensors above 2M elements are
# reduced in rows of 64K elements (each exact to ~2e-8) whose norms are combined in float64: 2e-7
# at any size, and faster (1.8 ms instead of 3.4 ms for 16.8M elements: rows reduce in
# parallel). Below 2M torch's own norm is kept (within 4e-5), so smaller models - the seed CNN's
# 1.2M-element fc1 - sound bit for bit as before.
_CHUNKED_NUMEL = 1 << 21
_ROW = 1 << 16


def _cpu_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    small = [i for i, g in enumerate(grads) if g.numel() <= _CHUNKED_NUMEL
             or g.layout != torch.strided]
    vec = torch.empty(len(grads), dtype=torch.float32)
    if small:
        vec[small] = fused_norms([grads[i] for i in small])
    for i, g in enumerate(grads):
        if g.numel() > _CHUNKED_NUMEL and g.layout == torch.strided:
            flat = g.reshape(-1)
            rows = flat.numel() // _ROW
            parts = torch.cat([
                torch.linalg.vector_norm(flat[:rows * _ROW].view(rows, _ROW), dim=1,
                                         dtype=torch.float32),
                torch.linalg.vector_norm(flat[rows * _ROW:], dtype=torch.float32).reshape(1)])
            vec[i] = torch.linalg.vector_norm(parts, dtype=torch.float64)
    return _finite_or_wide(vec, grads)


def stacked_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """Norms of same-shaped dense tensors in one op over their stack (float32 vector)."""
    if grads[0].layout != torch.strided:
        raise RuntimeError("sparse gradient: use the general path")
    dims = tuple(range(1, grads[0].dim() + 1))
    vec = torch.linalg.vector_norm(torch.stack(grads), dim=dims, dtype=torch.float32)
    return _finite_or_wide(vec, grads)


def dense(g: torch.Tensor) -> torch.Tensor:
    # Sparse gradients (e.g. nn.Embedding(sparse=True)): the norm of the stored values.
    return g.coalesce().values() if g.is_sparse else g


def to_host(positions: np.ndarray, vec: torch.Tensor, work: Any = None
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


def local(g: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; any other tensor as it is."""
    to_local = getattr(g, "to_local", None)
    return to_local() if to_local is not None else g


def unscale(vec: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    if scale is None:
        return vec
    return vec / scale.to(vec.device, torch.float32, non_blocking=True)


def flag_to_host(flag: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start moving a device scalar (a skip flag) to the host without waiting for it."""
    flag = flag.detach().reshape(-1)[:1]
    if flag.device.type == "cuda":
        host = flag.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(flag.device))
        return host, event
    return flag.to("cpu", copy=True), None

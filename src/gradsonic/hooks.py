"""How an optimizer step is heard: the hooks on the optimizer (and the GradScaler).

:func:`torch_optimizer` finds the torch optimizer inside a wrapper; :class:`StepHook` reads the
norms in the step's post-hook (closures and fused AMP steps in its pre-hook); :class:`ScalerHook`
hears the steps a ``GradScaler`` skips. All hold the sonifier weakly and run eagerly inside a
``torch.compile``'d step. The sonifier they call is duck-typed: ``_enqueue``, ``_closed``,
``steps``, ``closed``.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

from .errors import ConfigTypeError

def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside ``optimizer`` (itself, or what a wrapper holds)."""
    obj = optimizer
    for _ in range(8):
        inner = None
        for attr in ("_optimizer", "optimizer", "original_optimizer"):
            candidate = getattr(obj, "__dict__", {}).get(attr)
            if isinstance(candidate, torch.optim.Optimizer) and candidate is not obj:
                inner = candidate
                break
        if inner is None:
            break
        obj = inner
    if isinstance(obj, torch.optim.Optimizer) and hasattr(obj, "_optimizer_step_pre_hooks"):
        return obj
    raise ConfigTypeError(
        "wrap() takes a torch.optim.Optimizer or a wrapper holding one in .optimizer, "
        "._optimizer or .original_optimizer (accelerate's AcceleratedOptimizer, Lightning's "
        f"LightningOptimizer, Opacus' DPOptimizer), not {type(optimizer).__name__}")


def eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` eagerly inside a ``torch.compile``'d optimizer step (dynamo cannot trace
    weak references, threads or NumPy): a graph break instead of a crash."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    if disable is None:
        try:
            from torch._dynamo import disable
        except ImportError:  # pragma: no cover - torch without dynamo
            return fn
    return disable(fn)


class StepHook:
    """The step hooks on one optimizer; hold the sonifier and the optimizer weakly.

    The norms are read in the step's *post*-hook: after every pre-hook (a later one that clips
    or adds noise is heard), after the wrappers' own changes, from the gradients the update
    used (torch's optimizers leave ``.grad`` as it was). Two steps are read earlier, by the
    pre-hook: ``step(closure)`` (LBFGS, Lightning) right after the closure's first evaluation,
    and a fused optimizer under a ``GradScaler`` (``grad_scale`` set on it: the gradients are
    still scaled, the step unscales inside its kernel), divided by that scale, with the
    scaler's ``found_inf`` as the skip flag.
    """

    __slots__ = ("pre", "post", "optimizer", "read")

    def __init__(self, son: Any, optimizer: torch.optim.Optimizer) -> None:
        son_ref = weakref.ref(son)
        self.optimizer = weakref.ref(optimizer)
        self.read = False  # this step's norms are queued already (closure or fused AMP)
        hook = self

        @eager
        def pre(opt: torch.optim.Optimizer, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            hook.read = False
            son = son_ref()
            if son is None or son._closed:
                return None
            # torch passes the step's own arguments with the optimizer first: (self, closure?)
            closure = kwargs.get("closure")
            positional = closure is None and len(args) > 1 and callable(args[1])
            if positional:
                closure = args[1]
            if closure is None:
                scale = getattr(opt, "grad_scale", None)
                if isinstance(scale, torch.Tensor):
                    hook.read = True
                    son._enqueue(opt, False, scale, found_inf(opt))
                return None
            wrapped = FirstEvaluation(closure, son_ref, opt, hook)
            if positional:
                return (args[0], wrapped, *args[2:]), kwargs
            return args, {**kwargs, "closure": wrapped}

        @eager
        def post(opt: torch.optim.Optimizer, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
            if hook.read:
                hook.read = False
                return
            son = son_ref()
            if son is not None and not son._closed:
                son._enqueue(opt, False, None, found_inf(opt))

        self.pre = optimizer.register_step_pre_hook(pre)
        self.post = optimizer.register_step_post_hook(post)
        try:  # before post-hooks registered earlier (one that zeroes the gradients, say)
            optimizer._optimizer_step_post_hooks.move_to_end(self.post.id, last=False)
        except (AttributeError, KeyError):  # pragma: no cover - another torch layout
            pass

    def remove(self) -> None:
        self.pre.remove()
        self.post.remove()


def found_inf(optimizer: Any) -> torch.Tensor | None:
    """A fused optimizer's skip flag under a ``GradScaler`` (set by ``scaler.step``)."""
    flag = getattr(optimizer, "found_inf", None)
    return flag if isinstance(flag, torch.Tensor) else None


class FirstEvaluation:
    """A step's closure that queues the step's norms right after its first evaluation."""

    __slots__ = ("closure", "son_ref", "optimizer", "hook")

    def __init__(self, closure: Callable[[], Any], son_ref: "weakref.ref[Any]",
                 optimizer: torch.optim.Optimizer, hook: StepHook) -> None:
        self.closure = closure
        self.son_ref = son_ref
        self.optimizer = optimizer
        self.hook = hook

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.closure(*args, **kwargs)
        if not self.hook.read:
            self.hook.read = True
            son = self.son_ref()
            if son is not None and not son._closed:
                son._enqueue(self.optimizer, skipped=False)
        return out


class ScalerHook:
    """Shadows ``scaler.step`` on the instance to hear the steps the scaler skips.

    After the real ``scaler.step(optimizer)`` returns, if the optimizer's step hook did not fire
    (the scaler found inf/NaN and skipped the update), the sonifier reads the unscaled gradients
    and queues the step marked ``skipped``. Holds the scaler and the sonifier weakly.
    """

    __slots__ = ("scaler", "original", "__weakref__")

    def __init__(self, scaler: Any, son: Any) -> None:
        self.scaler = weakref.ref(scaler)
        self.original = scaler.step  # the bound method of the class
        son_ref = weakref.ref(son)
        original = self.original

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            sonifier = son_ref()
            before = sonifier.steps if sonifier is not None else 0
            out = original(optimizer, *args, **kwargs)
            sonifier = son_ref()
            if (sonifier is not None and not sonifier.closed and sonifier.steps == before
                    and scaler.is_enabled()):
                sonifier._enqueue(torch_optimizer(optimizer), skipped=True)
            return out

        scaler.step = step

    def remove(self) -> None:
        scaler = self.scaler()
        if scaler is not None and "step" in vars(scaler):
            del scaler.step  # back to the class's method

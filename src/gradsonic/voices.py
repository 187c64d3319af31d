"""Voices: which trainable parameters are heard, and under which name.

A *voice* is what one tone per step stands for. By default it is a module's directly owned
trainable parameters except biases - a ``Linear``'s ``weight``, an ``nn.MultiheadAttention``'s
``in_proj_weight`` (or ``q/k/v_proj_weight``), a ViT's ``class_token`` - and its norm is the norm of
all of them together (of their concatenated gradients). Three refinements make that match how
people think of their models:

* **Parametrizations** (``torch.nn.utils.parametrize``, ``parametrizations.weight_norm`` /
  ``spectral_norm`` / ``orthogonal``) keep the trained tensors in
  ``fc.parametrizations.weight.original[0/1]``; they are heard as ``fc``'s ``weight``, in voice
  ``fc``. So are the old hook-based ``weight_norm`` (``weight_g``/``weight_v``) and
  ``spectral_norm`` (``weight_orig``).
* **Recurrent layers** (``nn.RNN``/``LSTM``/``GRU``) with ``num_layers > 1`` give one voice per
  stacked layer, ``rnn.l0``, ``rnn.l1``, ... (both directions and the input and hidden weights of
  that depth together): a stacked layer is one layer of depth, like a ``Linear``, and its norm
  tells how that depth learns. One-layer RNNs are one voice named after the module.
* **Parameters owned by the root module** (a ViT's ``class_token``) are each a voice named after
  the parameter.

Tied parameters (an embedding shared with the output layer) are one parameter and one voice, under
their first name. Biases (``bias``, ``bias_ih_l0``, ``in_proj_bias``, ...) are left out by default:
name them in ``layers=`` to hear them.

:class:`Selection` turns the user's ``layers=`` into a rule ``parameter -> voice name``; the tap
(:mod:`gradsonic.tap`) applies it to whatever parameters an optimizer is about to update.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from torch import nn

from .errors import ConfigError, ConfigTypeError

# Wrappers' prefixes: torch.compile's, FSDP1's and activation checkpointing's
_ORIG_MOD = re.compile(r"(^|\.)((?:_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)\.)+")
_PARAMETRIZED = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)$")
_RNN_LAYER = re.compile(r"_l(\d+)(?:_reverse)?$")
_OLD_STYLE = ("_orig", "_g", "_v")  # spectral_norm's weight_orig, weight_norm's weight_g/_v


def is_bias(attr: str) -> bool:
    """``bias``, ``bias_ih_l0``, ``in_proj_bias``, ``bias_k``: parameters heard only on request."""
    return attr == "bias" or attr.startswith("bias_") or attr.endswith("_bias")


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of the model, as gradsonic names it."""

    name: str  # as in model.named_parameters() (without torch.compile's "_orig_mod.")
    param: nn.Parameter
    owner: str  # the module a user thinks owns it ("" = the root); "fc" for fc's parametrization
    attr: str  # the attribute a user thinks of: "weight" for a parametrization's original0/1
    voice: str  # its default voice
    bias: bool

    @property
    def canonical(self) -> str:
        """``owner.attr``: ``fc.weight`` also for ``fc.parametrizations.weight.original0``."""
        return f"{self.owner}.{self.attr}" if self.owner else self.attr


def unwrap_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:  # names as in the plain model, without "module." / "_module."
        if isinstance(model, (DataParallel, DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "GradSampleModule" and isinstance(
                getattr(model, "_module", None), nn.Module):  # Opacus
            model = model._module
        else:
            return model


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(_ORIG_MOD.sub(r"\1", n), m) for n, m in model.named_modules()]


def describe(model: nn.Module) -> list[ParamInfo]:
    """Every parameter of ``model`` once, in ``named_parameters()`` order. Linear time."""
    infos: list[ParamInfo] = []
    seen: set[int] = set()
    modules = named_modules(model)
    by_name = dict(modules)
    for mname, module in modules:
        for pname, p in module._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{pname}" if mname else pname
            owner, attr, owner_module = mname, pname, module
            hit = _PARAMETRIZED.match(mname)
            if hit and type(module).__name__.endswith("ParametrizationList"):
                owner, attr = hit.group(1) or "", hit.group(2)
                # A parametrized parametrization (fc.parametrizations.weight.parametrizations.
                # original.original) is still fc's weight: climb while the owner is a
                # ParametrizationList itself.
                up = _PARAMETRIZED.match(owner)
                while up and type(by_name.get(owner)).__name__.endswith("ParametrizationList"):
                    owner, attr = up.group(1) or "", up.group(2)
                    up = _PARAMETRIZED.match(owner)
                owner_module = by_name.get(owner, module)
            else:
                for suffix in _OLD_STYLE:
                    base = pname[: -len(suffix)]
                    if (pname.endswith(suffix) and base and base not in module._parameters
                            and hasattr(module, base)):
                        attr = base
                        break
            voice = owner
            layer = _RNN_LAYER.search(attr)
            if (layer and isinstance(owner_module, nn.RNNBase)
                    and getattr(owner_module, "num_layers", 1) > 1):
                voice = f"{owner}.l{layer.group(1)}" if owner else f"l{layer.group(1)}"
            elif not owner:
                voice = attr  # a raw Parameter of the root module: its own voice
            infos.append(ParamInfo(full, p, owner, attr, voice, is_bias(attr)))
    return infos


# -- layers=: explicit selections ---------------------------------------------------------
_OWN, _TREE, _PARAM, _VOICE = "own", "tree", "param", "voice"


class Selection:
    """The user's ``layers=`` as a rule ``ParamInfo -> voice name | None``.

    * ``None`` (default): every non-bias parameter, in its default voice. Voices are added as
      parameters get trained (a layer unfrozen or added later is heard from then on).
    * a list of entries, heard in the order given (voices are fixed at attach):
        - a module (or its exact name): its own non-bias parameters in its default voice(s); a
          container that owns none (a block, ``encoder.layers.0``) is one voice of everything
          below it;
        - a Parameter (or its exact name, real or canonical: ``rnn.weight_ih_l0``, ``fc.bias``,
          ``fc.weight`` for a parametrized weight): a voice of its own, named canonically;
        - a glob pattern (``fnmatch``: ``*``, ``?``, ``[...]``): the modules and default voices
          whose names it matches; if none, the parameters whose names it matches (one voice
          each).
    """

    def __init__(self, model: nn.Module, layers: Sequence[Any] | None) -> None:
        self.grows = layers is None
        infos = describe(model)
        self.initial: list[str] = []
        self._initial_set: set[str] = set()
        self._root = type(model).__name__
        self._entries: dict[str, dict[str, int]] = {_OWN: {}, _TREE: {}, _PARAM: {}, _VOICE: {}}
        #: every voice this selection could hear, frozen layers' too (what voices= groups)
        self.candidates: list[str] = []
        if layers is None:
            for info in infos:
                if info.bias or info.param.is_complex():
                    continue
                if info.param.requires_grad and info.voice not in self._initial_set:
                    self.initial.append(info.voice)
                    self._initial_set.add(info.voice)
                self.candidates.append(info.voice)
            self.candidates = list(dict.fromkeys(self.candidates))
            complex_ = [i for i in infos if i.param.requires_grad and i.param.is_complex()]
            if not self.initial and complex_:
                raise ConfigError(
                    f"parameter {complex_[0].name!r} is complex ({complex_[0].param.dtype}): "
                    "gradsonic reads real gradient norms only, and the model has no other "
                    "trainable parameter to listen to")
            if not self.initial:
                frozen = bool(self.candidates) and not any(
                    i.bias and i.param.requires_grad for i in infos)
                raise ConfigError(
                    f"model {type(model).__name__} has no trainable parameter "
                    + ("yet (every weight is frozen); pass layers=[...] naming the layers to hear "
                       "once they train, or attach after unfreezing" if frozen else
                       "other than biases; pass layers=[...] naming what to listen to"))
            return
        if isinstance(layers, (str, nn.Module, nn.Parameter)) or not isinstance(layers, Iterable):
            raise ConfigTypeError(
                "layers must be None or a list of modules, parameters and/or name patterns, "
                f"not {type(layers).__name__} ({layers!r})")
        layers = list(layers)
        if not layers:
            raise ConfigError("layers is empty; pass None to listen to every trainable weight")
        modules = named_modules(model)
        module_names = {n for n, _ in modules if n}
        name_of = {id(m): n for n, m in modules}
        param_name = {id(i.param): i.name for i in infos}
        owners = {i.owner for i in infos if i.owner and not i.bias}
        voices = {i.voice for i in infos if not i.bias}
        params = {i.name for i in infos} | {i.canonical for i in infos}
        for k, item in enumerate(layers):
            if isinstance(item, nn.Parameter):
                if id(item) not in param_name:
                    raise ConfigError(f"layer parameter of shape {tuple(item.shape)} is not a "
                                      "parameter of the model")
                item = param_name[id(item)]
            elif isinstance(item, nn.Module):
                if id(item) not in name_of:
                    raise ConfigError(f"layer {type(item).__name__} ({item!r:.60}) is not a "
                                      "submodule of the model")
                item = name_of[id(item)]
            elif not isinstance(item, str):
                raise ConfigTypeError(
                    "each entry of layers must be a torch.nn.Module, a Parameter or a name pattern "
                    f"(str), not {type(item).__name__} ({item!r})")
            self._add(k, item, infos, module_names, owners, voices, params)
        order: dict[str, tuple[int, int]] = {}
        for j, info in enumerate(infos):
            hit = self._match(info)
            if hit is not None and hit[1] not in order:
                order[hit[1]] = (hit[0], j)
        self.initial = sorted(order, key=order.__getitem__)
        self._initial_set = set(self.initial)
        self.candidates = list(self.initial)
        for info in infos:
            if self.voice_of(info) is not None and info.param.is_complex():
                raise ConfigError(
                    f"parameter {info.name!r} is complex ({info.param.dtype}): gradsonic reads "
                    "real gradient norms only; leave it out of layers")

    def _add(self, k: int, item: str, infos: list[ParamInfo], module_names: set[str],
             owners: set[str], voices: set[str], params: set[str]) -> None:
        e = self._entries
        if item == "":  # the model itself: one voice of everything
            e[_TREE].setdefault("", k)
            return
        if item in owners:
            e[_OWN].setdefault(item, k)
            return
        if item in voices:
            e[_VOICE].setdefault(item, k)
            return
        if item in module_names:
            below = [i for i in infos if i.owner.startswith(item + ".") and not i.bias]
            if not below:
                raise ConfigError(
                    f"layer {item!r} has no parameters of its own or below it to listen to "
                    f"(only biases, or none); modules with weights include {self._sample(infos)}")
            e[_TREE].setdefault(item, k)
            return
        if item in params:
            e[_PARAM].setdefault(item, k)
            return
        hits = ([o for o in owners if fnmatch.fnmatchcase(o, item)],
                [v for v in voices if fnmatch.fnmatchcase(v, item)])
        if hits[0] or hits[1]:
            for o in hits[0]:
                e[_OWN].setdefault(o, k)
            for v in hits[1]:
                e[_VOICE].setdefault(v, k)
            return
        hits_p = [p for p in params if fnmatch.fnmatchcase(p, item)]
        for p in hits_p:
            e[_PARAM].setdefault(p, k)
        if not hits_p:
            what = ("matches only modules without parameters to listen to"
                    if any(fnmatch.fnmatchcase(n, item) for n in module_names)
                    else "matches no module or parameter")
            raise ConfigError(f"layer pattern {item!r} {what}; voices include "
                              f"{self._sample(infos)}")

    @staticmethod
    def _sample(infos: list[ParamInfo]) -> list[str]:
        out: list[str] = []
        for i in infos:
            if not i.bias and i.voice not in out:
                out.append(i.voice)
            if len(out) == 8:
                break
        return out

    def _match(self, info: ParamInfo) -> tuple[int, str] | None:
        """(entry index, voice name) of the first entry that claims ``info``, or None."""
        e = self._entries
        best: tuple[int, str] | None = None

        def offer(k: int | None, voice: str) -> None:
            nonlocal best
            if k is not None and (best is None or k < best[0]):
                best = (k, voice)

        offer(e[_PARAM].get(info.name), info.canonical)
        offer(e[_PARAM].get(info.canonical), info.canonical)
        if not info.bias:
            offer(e[_OWN].get(info.owner), info.voice)
            offer(e[_VOICE].get(info.voice), info.voice)
            if e[_TREE]:
                offer(e[_TREE].get(""), self._root)
                parts = info.owner.split(".") if info.owner else []
                for n in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:n])
                    offer(e[_TREE].get(prefix), prefix)
        return best

    def voice_of(self, info: ParamInfo) -> str | None:
        """The voice ``info`` is heard in, or None if this selection leaves it out."""
        if self.grows:
            if info.bias or info.param.is_complex():
                return None
            return info.voice
        hit = self._match(info)
        if hit is None or hit[1] not in self._initial_set:
            return None
        return hit[1]

    def why_not(self, info: ParamInfo) -> str:
        """Why a trainable parameter is not heard (for ``summary()``)."""
        if info.param.is_complex():
            return f"complex ({info.param.dtype}): gradsonic reads real gradient norms only"
        if info.bias and self.grows:
            return "bias: not heard by default; name it in layers= to hear it"
        return "not selected by layers="


# -- voices=: fitting many voices into a few -------------------------------------------------
DEFAULT_MAX_VOICES = 16


class Grouping:
    """Fine voices (one per layer) -> the voices heard, following the model's structure.

    ``voices=N`` (default 16): a model with more than N layer voices is heard as at most N, each
    a subtree of the module tree (a block, a stage, the encoder) or a run of consecutive siblings
    (``layers.0..5``); its norm is the norm of all their gradients together. The tree is split
    from the top, largest group first, while the count stays within N - so the grouping follows
    the model's own blocks. ``voices="all"``: one voice per layer. ``voices={"name": [patterns],
    ...}``: named groups of the layer voices whose names match (glob); the rest go to ``"other"``.
    """

    def __init__(self, fine: list[str], voices: Any = DEFAULT_MAX_VOICES) -> None:
        self._exact: dict[str, str] = {}
        self._nodes: dict[str, str] = {}  # module path -> group, for voices added later
        self._patterns: list[tuple[str, list[str]]] | None = None
        if voices == "all" or voices is None:
            return
        if isinstance(voices, dict):
            if not voices:
                raise ConfigError("voices={} names no group; give {'name': [patterns], ...}, "
                                  "a number, or 'all'")
            self._patterns = _check_patterns(voices)
            for v in fine:
                self._exact[v] = self._by_pattern(v)
            used = set(self._exact.values())
            empty = [name for name, _ in self._patterns if name not in used]
            if empty:
                raise ConfigError(f"voices group(s) {empty} match no voice not already taken by "
                                  "an earlier group (the first matching group wins); the voices "
                                  f"are {fine[:12]}{' ...' if len(fine) > 12 else ''}")
            return
        if isinstance(voices, bool) or not isinstance(voices, int) or voices < 1:
            raise ConfigError(f"voices must be a number >= 1, 'all', or a dict of name -> "
                              f"patterns, not {voices!r}")
        if len(fine) <= voices:
            return
        self._split(fine, voices)

    def group_of(self, voice: str) -> str:
        """The heard voice a layer voice belongs to (itself when not grouped)."""
        hit = self._exact.get(voice)
        if hit is not None:
            return hit
        if self._patterns is not None:
            return self._by_pattern(voice)
        parts = voice.split(".")
        for n in range(len(parts), 0, -1):  # a voice added later joins its nearest group
            hit = self._nodes.get(".".join(parts[:n]))
            if hit is not None:
                return hit
        return voice

    def _by_pattern(self, voice: str) -> str:
        assert self._patterns is not None
        parts = voice.split(".")
        prefixes = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
        for name, patterns in self._patterns:
            if any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in prefixes):
                return name
        return "other"

    def _split(self, fine: list[str], limit: int) -> None:
        root = _Node("")
        for v in fine:
            node = root
            node.voices.append(v)
            for part in v.split("."):
                node = node.child(part)
                node.voices.append(v)
            node.own = True
        groups: list[_Group] = [_Group(root.path or "model", [root], root.voices)]
        while True:  # level by level, so that all voices are of one granularity
            split = [self._parts(g) if len(g.nodes) == 1 and len(g.voices) > 1 else [g]
                     for g in groups]
            count = sum(len(parts) for parts in split)
            if all(parts == [g] for parts, g in zip(split, groups)):
                break
            if count <= limit:
                groups = [g for parts in split for g in parts]
                continue
            # The next level does not fit: share the slots among the groups that would split,
            # as runs of consecutive children - only if each gets at least two (uniform voices).
            fixed = sum(1 for parts in split if len(parts) == 1)
            splitting = [i for i, parts in enumerate(split) if len(parts) > 1]
            share = (limit - fixed) // len(splitting)
            if share >= 2:
                groups = [g for i, parts in enumerate(split) for g in (
                    _runs(parts, share, groups[i].nodes[0].path) if len(parts) > 1 else parts)]
            break
        order = {v: i for i, v in enumerate(fine)}
        groups.sort(key=lambda g: order[g.voices[0]])
        for g in groups:
            for v in g.voices:
                self._exact[v] = g.name
            for node in g.nodes:
                for path in node.paths():
                    self._nodes[path] = g.name


    @staticmethod
    def _parts(g: "_Group") -> list["_Group"]:
        node = g.nodes[0]
        parts = [_Group(node.path, [], [node.path])] if node.own and node.path else []
        return parts + [_Group(c.path, [c], c.voices) for c in node.children.values()]


class _Node:
    __slots__ = ("path", "children", "voices", "own")

    def __init__(self, path: str) -> None:
        self.path = path
        self.children: dict[str, _Node] = {}
        self.voices: list[str] = []
        self.own = False

    def child(self, part: str) -> "_Node":
        node = self.children.get(part)
        if node is None:
            node = self.children[part] = _Node(f"{self.path}.{part}" if self.path else part)
        return node

    def paths(self) -> list[str]:
        out = [self.path] if self.path else []
        for c in self.children.values():
            out += c.paths()
        return out


@dataclass
class _Group:
    name: str
    nodes: list[_Node]
    voices: list[str]


def _runs(parts: list[_Group], k: int, parent: str) -> list[_Group]:
    """Split ``parts`` into ``k`` consecutive runs of about equal voice counts."""
    total = sum(len(p.voices) for p in parts)
    runs: list[list[_Group]] = [[]]
    acc = 0
    for i, p in enumerate(parts):
        left_parts, left_runs = len(parts) - i, k - len(runs)
        if runs[-1] and (acc >= total * len(runs) / k or left_parts <= left_runs) \
                and len(runs) < k:
            runs.append([])
        runs[-1].append(p)
        acc += len(p.voices)
    out = []
    for run in runs:
        first, last = run[0].name.rsplit(".", 1)[-1], run[-1].name.rsplit(".", 1)[-1]
        label = first if len(run) == 1 else f"{first}..{last}"
        name = f"{parent}.{label}" if parent else label
        out.append(_Group(name, [n for p in run for n in p.nodes],
                          [v for p in run for v in p.voices]))
    return out


def _check_patterns(voices: dict[Any, Any]) -> list[tuple[str, list[str]]]:
    out = []
    for name, patterns in voices.items():
        if isinstance(patterns, str):
            patterns = [patterns]
        if (not isinstance(name, str) or not name or not isinstance(patterns, (list, tuple))
                or not patterns or not all(isinstance(p, str) for p in patterns)):
            raise ConfigError(f"voices must map group names to glob patterns, e.g. "
                              f"{{'encoder': ['encoder.*']}}; not {name!r}: {patterns!r}")
        out.append((name, list(patterns)))
    return out

"""Norm -> pitch: the mappings, and the plan that turns a block of norms into tones.

A mapping is any callable that takes a float64 array of *finite, non-negative* gradient norms and
returns an array of the same shape with a frequency in Hz for each. Non-finite and missing norms
never reach a mapping: :func:`plan_tones` turns them into alarms and silences first, and the synth
clamps every frequency into its audible, alias-free range afterwards.

Built in:

* ``"seed"`` - :class:`SeedMapping`, ``f = 200 + 100 * norm`` Hz, the 2019 experiment's mapping.
* ``"log"`` - :class:`LogMapping` (the default), one octave per decade of norm, A4 = 440 Hz at
  norm 1, held inside 55-3520 Hz (six octaves, norms 1e-3 to 1e3).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union, runtime_checkable

import numpy as np

from ._options import StrEnum, check_number
from .errors import ConfigError, ConfigTypeError

# Tone kinds in a plan; the synth renders each differently.
TONE = np.int8(0)
SILENT = np.int8(1)  # no gradient for this layer this step
ALARM = np.int8(2)  # NaN or +-Inf norm


@runtime_checkable
class Mapping(Protocol):
    """What a mapping is: ``mapping(norms) -> frequencies_hz``, elementwise, same shape."""

    def __call__(self, norms: np.ndarray) -> np.ndarray: ...


class MappingName(StrEnum):
    SEED = "seed"
    LOG = "log"


@dataclass(frozen=True)
class SeedMapping:
    """The original experiment's linear mapping, ``f = offset_hz + hz_per_unit * norm``."""

    offset_hz: float = 200.0
    hz_per_unit: float = 100.0

    def __post_init__(self) -> None:
        check_number(self.offset_hz, "SeedMapping.offset_hz", allow_low=True)
        check_number(self.hz_per_unit, "SeedMapping.hz_per_unit")

    def __call__(self, norms: np.ndarray) -> np.ndarray:
        return self.offset_hz + self.hz_per_unit * np.asarray(norms, dtype=np.float64)


@dataclass(frozen=True)
class LogMapping:
    """Equal ratios of norm give equal musical intervals.

    ``f = center_hz * 2 ** (octaves_per_decade * log10(norm / center_norm))``, held inside
    ``[min_hz, max_hz]``. A norm of 0 gets ``min_hz`` (the lowest pitch, so a dead layer stays
    audible and differs from a layer with no gradient, which is silent).

    Why this is the default: gradient norms of real models spread over many decades and move by
    factors, not by offsets; pitch is heard on a log scale too. A ten-fold jump is one octave
    whatever the model, and an explosion to 1e17 stays a (top-of-range) note instead of a tone
    far above hearing.
    """

    center_norm: float = 1.0
    center_hz: float = 440.0
    octaves_per_decade: float = 1.0
    min_hz: float = 55.0
    max_hz: float = 3520.0

    def __post_init__(self) -> None:
        check_number(self.center_norm, "LogMapping.center_norm")
        check_number(self.center_hz, "LogMapping.center_hz")
        check_number(self.octaves_per_decade, "LogMapping.octaves_per_decade")
        check_number(self.min_hz, "LogMapping.min_hz")
        check_number(self.max_hz, "LogMapping.max_hz")
        if not self.min_hz < self.max_hz:
            raise ConfigError(
                f"LogMapping.min_hz must be below max_hz, not {self.min_hz!r} >= {self.max_hz!r}")

    def __call__(self, norms: np.ndarray) -> np.ndarray:
        x = np.asarray(norms, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            octaves = self.octaves_per_decade * (np.log10(x) - math.log10(self.center_norm))
            f = self.center_hz * np.exp2(octaves)
        return np.clip(np.nan_to_num(f, nan=self.min_hz, posinf=self.max_hz, neginf=self.min_hz),
                       self.min_hz, self.max_hz)


MappingLike = Union[str, MappingName, Callable[[np.ndarray], np.ndarray]]


def resolve_mapping(mapping: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Turn a mapping name or object into the callable the worker uses."""
    if isinstance(mapping, str):
        name = MappingName.parse(mapping, "mapping")
        return SeedMapping() if name is MappingName.SEED else LogMapping()
    if callable(mapping):
        return mapping
    raise ConfigTypeError(
        f"mapping must be one of {sorted(m.value for m in MappingName)!r} or a callable "
        f"norms -> Hz, not {type(mapping).__name__} ({mapping!r})")


def mapping_settings(mapping: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """A JSON-able description of a mapping (stored in recordings)."""
    if isinstance(mapping, (SeedMapping, LogMapping)):
        kind = "seed" if isinstance(mapping, SeedMapping) else "log"
        return {"kind": kind, **dataclasses.asdict(mapping)}
    return {"kind": "custom", "repr": repr(mapping)[:200]}


def mapping_from_settings(settings: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The mapping a recording was made with (a custom one cannot be rebuilt)."""
    params = {k: v for k, v in settings.items() if k != "kind"}
    if settings.get("kind") == "seed":
        return SeedMapping(**params)
    if settings.get("kind") == "log":
        return LogMapping(**params)
    raise ConfigError(f"the recording used a custom mapping ({settings.get('repr')}); "
                      "pass one of 'seed' or 'log' to render it")


def plan_tones(mapping: Callable[[np.ndarray], np.ndarray], norms: np.ndarray,
               missing: np.ndarray, skipped: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and tone kinds for a block of steps.

    ``norms`` and ``missing`` are ``[steps, layers]``; ``skipped`` (optional, ``[steps]``) marks
    steps the optimizer skipped for inf/NaN. Returns ``(freqs_hz float64, kinds int8)`` of the
    norms' shape: missing layers are ``SILENT``, NaN/Inf norms and every layer of a skipped step
    ``ALARM``, the rest ``TONE`` with the mapping's frequency. The mapping only ever sees finite
    values.
    """
    norms = np.asarray(norms, dtype=np.float64)
    finite = np.isfinite(norms) & ~missing
    kinds = np.full(norms.shape, TONE, dtype=np.int8)
    kinds[missing] = SILENT
    kinds[~finite & ~missing] = ALARM
    if skipped is not None and skipped.any():
        kinds[skipped] = ALARM
        finite[skipped] = False
    freqs = np.zeros(norms.shape, dtype=np.float64)
    if finite.any():
        values = np.abs(norms[finite])
        hz = np.asarray(mapping(values), dtype=np.float64)
        if hz.shape != values.shape:
            raise ConfigError(
                f"mapping returned shape {hz.shape} for norms of shape {values.shape}; "
                "a mapping must return one frequency per norm")
        freqs[finite] = hz
    return freqs, kinds

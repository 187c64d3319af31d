"""Norm -> pitch: the mappings, and the plan that turns a block of norms into tones.

A mapping is any callable that takes a float64 array of *finite, non-negative* gradient norms and
returns an array of the same shape with a frequency in Hz for each. Non-finite and missing norms
never reach a mapping: :func:`plan_tones` turns them into alarms and silences first.

A built-in mapping has a ``band``, the comfortable range its tones live in. A norm whose pitch
would fall outside it is not clamped silently: it plays at the band's edge with the *over-range*
timbre (kind ``OVER``: odd harmonics, a bright buzz), so an explosion stays loud and clear and a
vanishing gradient sounds different from a small one. (A custom mapping without ``band`` is only
held inside the synth's alias-free range.)

Built in:

* ``"log"`` - :class:`LogMapping` (the default): half an octave per decade of norm, C6 = 1046.5 Hz at
  norm 1, band C4-C8 (261.6-4186 Hz) = norms 1e-4 to 1e4.
* ``"seed"`` - :class:`SeedMapping`, ``f = 200 + 100 * norm`` Hz, the 2019 experiment's mapping, band
  200-4200 Hz (norms 0 to 40).

Why that band: at the default 10 ms a tone of 262 Hz still has 2.6 cycles - a pitch, where the
old 55 Hz floor gave half a cycle, a thump - and nothing goes above ~4.2 kHz, where long listening
gets piercing (the old seed mapping clamped explosions to 19.8 kHz, inaudible to most adults).
Half an octave per decade fits the eight decades gradient norms of real models span into those
four octaves; a ten-fold jump is still a tritone, and accents (:mod:`gradsonic.accents`) mark spikes
on top of that.
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
OVER = np.int8(3)  # beyond the mapping's band: played at its edge with the over-range timbre


@runtime_checkable
class Mapping(Protocol):
    """What a mapping is: ``mapping(norms) -> frequencies_hz``, elementwise, same shape."""

    def __call__(self, norms: np.ndarray) -> np.ndarray: ...


class MappingName(StrEnum):
    SEED = "seed"
    LOG = "log"


@dataclass(frozen=True)
class SeedMapping:
    """The original experiment's linear mapping, ``f = offset_hz + hz_per_unit * norm``, heard
    inside ``[min_hz, max_hz]`` (beyond it: the over-range timbre at the edge)."""

    offset_hz: float = 200.0
    hz_per_unit: float = 100.0
    min_hz: float = 200.0
    max_hz: float = 4200.0

    def __post_init__(self) -> None:
        check_number(self.offset_hz, "SeedMapping.offset_hz", allow_low=True)
        check_number(self.hz_per_unit, "SeedMapping.hz_per_unit")
        _check_band(self, "SeedMapping")

    @property
    def band(self) -> tuple[float, float]:
        return (self.min_hz, self.max_hz)

    def __call__(self, norms: np.ndarray) -> np.ndarray:
        return self.offset_hz + self.hz_per_unit * np.asarray(norms, dtype=np.float64)


@dataclass(frozen=True)
class LogMapping:
    """Equal ratios of norm give equal musical intervals.

    ``f = center_hz * 2 ** (octaves_per_decade * log10(norm / center_norm))``, heard inside the
    band ``[min_hz, max_hz]``; beyond it (a norm of 0 included: a dead layer) the over-range
    timbre plays at the band's edge.

    Why this is the default: gradient norms of real models spread over many decades and move by
    factors, not by offsets; pitch is heard on a log scale too. A ten-fold jump is the same
    interval whatever the model, and an explosion to 1e17 stays a loud top-of-band buzz instead of
    a tone far above hearing.
    """

    center_norm: float = 1.0
    center_hz: float = 1046.5
    octaves_per_decade: float = 0.5
    min_hz: float = 261.63
    max_hz: float = 4186.0
    #: optional musical quantisation: each pitch snaps to the nearest note of this scale (on
    #: ``center_hz`` as the tonic) - pleasant for the chord layout; None: continuous pitch
    scale: str | None = None

    def __post_init__(self) -> None:
        check_number(self.center_norm, "LogMapping.center_norm")
        check_number(self.center_hz, "LogMapping.center_hz")
        check_number(self.octaves_per_decade, "LogMapping.octaves_per_decade")
        _check_band(self, "LogMapping")
        if self.scale is not None and self.scale not in SCALES:
            raise ConfigError(f"LogMapping.scale must be one of {sorted(SCALES)} or None, not "
                              f"{self.scale!r}")

    @property
    def band(self) -> tuple[float, float]:
        return (self.min_hz, self.max_hz)

    def __call__(self, norms: np.ndarray) -> np.ndarray:
        x = np.asarray(norms, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            octaves = self.octaves_per_decade * (np.log10(x) - math.log10(self.center_norm))
            f = self.center_hz * np.exp2(octaves)
            if self.scale is not None:
                f = self.center_hz * np.exp2(_snap(12.0 * octaves, SCALES[self.scale]) / 12.0)
        f = np.asarray(f, dtype=np.float64)  # (np.nan_to_num costs ~30 us a call, cold)
        f[~(f > -np.inf)] = 0.0  # NaN and -inf to 0 Hz; +inf stays (above the band)
        return f


#: semitone degrees of the scales a LogMapping can quantise to (0 = the tonic, center_hz)
SCALES = {"chromatic": tuple(range(12)), "major": (0, 2, 4, 5, 7, 9, 11),
          "minor": (0, 2, 3, 5, 7, 8, 10), "pentatonic": (0, 2, 4, 7, 9)}


def _snap(semitones: np.ndarray, degrees: tuple[int, ...]) -> np.ndarray:
    """Each value to the nearest semitone that is a degree of the scale (in any octave)."""
    grid = np.array([d + 12 * k for k in (-1, 0, 1) for d in degrees], dtype=np.float64)
    octave = np.floor(semitones / 12.0)
    within = semitones - 12.0 * octave
    with np.errstate(invalid="ignore"):
        nearest = grid[np.argmin(np.abs(within[..., None] - grid), axis=-1)]
    return np.where(np.isfinite(semitones), 12.0 * octave + nearest, semitones)


def _check_band(mapping: Any, what: str) -> None:
    check_number(mapping.min_hz, f"{what}.min_hz")
    check_number(mapping.max_hz, f"{what}.max_hz")
    if not mapping.min_hz < mapping.max_hz:
        raise ConfigError(f"{what}.min_hz must be below max_hz, not "
                          f"{mapping.min_hz!r} >= {mapping.max_hz!r}")


MappingLike = Union[str, MappingName, Callable[[np.ndarray], np.ndarray]]


def resolve_mapping(mapping: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Turn a mapping name or object into the callable the worker uses."""
    if isinstance(mapping, str):
        name = MappingName.parse(mapping, "mapping")
        return SeedMapping() if name is MappingName.SEED else LogMapping()
    if callable(mapping):
        _probe(mapping)
        return mapping
    raise ConfigTypeError(
        f"mapping must be one of {sorted(m.value for m in MappingName)!r} or a callable "
        f"norms -> Hz, not {type(mapping).__name__} ({mapping!r})")


def _probe(mapping: Callable[[np.ndarray], np.ndarray]) -> None:
    """Call a custom mapping once on typical norms: one frequency per norm, or a clear error
    now rather than audio that stops mid-run."""
    norms = np.array([1e-3, 0.5, 1.0, 7.0], dtype=np.float64)
    try:
        hz = np.asarray(mapping(norms.copy()))
    except Exception as e:
        raise ConfigError(f"mapping {mapping!r:.80} failed on norms {norms.tolist()}: "
                          f"{type(e).__name__}: {e}") from e
    if hz.shape != norms.shape:
        raise ConfigError(f"mapping {mapping!r:.80} returned shape {hz.shape} for norms of "
                          f"shape {norms.shape}; a mapping must return one frequency (Hz) per "
                          "norm")
    if hz.dtype.kind not in "iuf":
        raise ConfigError(f"mapping {mapping!r:.80} returned {hz.dtype} values; a mapping "
                          "must return frequencies in Hz (numbers)")


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
    ``ALARM``, pitches beyond the mapping's ``band`` ``OVER`` (at the band's edge), the rest
    ``TONE`` with the mapping's frequency. The mapping only ever sees finite values.
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
        band = getattr(mapping, "band", None)
        if band is not None:
            lo, hi = band
            outside = ~(hz >= lo) | (hz > hi)  # NaN from a mapping counts as below
            if outside.any():
                where = np.zeros(norms.shape, dtype=bool)
                where[finite] = outside
                kinds[where] = OVER
                hz = np.clip(np.nan_to_num(hz, nan=lo), lo, hi)
        freqs[finite] = hz
    return freqs, kinds


def sounded(steps: np.ndarray, every: int, norms: np.ndarray, missing: np.ndarray,
            skipped: np.ndarray) -> np.ndarray:
    """Which steps make sound under ``every=N``: steps 0, N, 2N, ... and every step with an
    alarm (a NaN/Inf norm on any voice, or a step the optimizer skipped), whatever its number.
    ``norms``/``missing`` are ``[steps, voices]`` (all the voices: an alarm on a voice a view
    leaves out still sounds the step)."""
    keep = np.asarray(steps) % every == 0
    if every > 1 and len(keep):
        with np.errstate(invalid="ignore"):
            keep = keep | np.asarray(skipped, dtype=bool) | (
                ~np.isfinite(norms) & ~np.asarray(missing, dtype=bool)).any(axis=1)
    return keep

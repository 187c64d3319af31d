"""Accents: a voice that spikes or collapses gets a tone a listener notices without remembering
pitches.

For each voice the detector keeps its last ``window`` finite norms (a ring, constant memory). A
step's norm is

* a **spike** (``SPIKE``) when it is at least ``spike_factor`` (3x) times the median of that
  history (once at least ``min_history`` steps are known). Why 3x and not 5x: a voice is often a
  group of layers (``voices=16``), and a ten-fold spike in one of five equal layers lifts the
  group's norm about 4.6x; ordinary batch-to-batch noise stays well under 3x (the 2019 demo's
  calm ``sgd-lr0.01`` preset: no accent in 200 steps; the jumpy ``sgd-lr0.1``: 14 steps of 200);
* a **collapse** (``COLLAPSE``) when it falls to ``collapse_factor`` (1/1000) of that median or
  below - a layer whose gradient dies, norm 0 included.

Non-finite norms are the alarm already (:mod:`gradsonic.mapping`) and are not accents. The marks
are a function of the norms alone, in step order, so ``gradsonic render`` and the plots rebuild
them from a recording exactly as the live run made them (a resumed run warms the detector up with
the recorded history). A spike is played louder with a percussive onset and a bright click, a
collapse with the louder onset alone (:meth:`gradsonic.synth.Synth.render`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ._options import check_number
from .errors import ConfigError, ConfigTypeError

MAX_WINDOW = 100_000  # steps of history: ~8 bytes per voice each
SPIKE = np.uint8(1)
COLLAPSE = np.uint8(2)


@dataclass(frozen=True)
class Accents:
    """When a voice is accented (see the module docstring). ``GradientSonifier(accents=...)``."""

    spike_factor: float = 3.0
    collapse_factor: float = 1e-3
    window: int = 32
    min_history: int = 8

    def __post_init__(self) -> None:
        check_number(self.spike_factor, "Accents.spike_factor", low=1.0)
        check_number(self.collapse_factor, "Accents.collapse_factor", high=1.0, allow_high=False)
        for name in ("window", "min_history"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int)
                    or not 1 <= value <= MAX_WINDOW):
                raise ConfigError(f"Accents.{name} must be an integer in 1..{MAX_WINDOW} "
                                  f"(steps), not {value!r}")
        if self.min_history > self.window:
            raise ConfigError(f"Accents.min_history ({self.min_history}) must not exceed "
                              f"window ({self.window})")

    def settings(self) -> dict[str, Any]:
        return asdict(self)


def resolve_accents(value: Any) -> Accents | None:
    if value is True:
        return Accents()
    if value is False or value is None:
        return None
    if isinstance(value, Accents):
        return value
    if isinstance(value, dict):
        allowed = [f.name for f in fields(Accents)]
        unknown = [k for k in value if k not in allowed]
        if unknown:  # (named with repr: a corrupt recording's key may hold any character)
            raise ConfigError(f"accents settings name {', '.join(map(repr, unknown))}, which "
                              f"are not Accents fields ({', '.join(allowed)})")
        return Accents(**value)
    raise ConfigTypeError(f"accents must be True, False or an Accents(...), not {value!r}")


class AccentDetector:
    """Marks ``[steps, voices]`` of norms in step order; keeps only ``window`` steps of history.

    A block of steps is marked at once: every step's window of the ``window`` norms before it is a
    view into [history, block] (``sliding_window_view``), sorted in one call."""

    def __init__(self, rule: Accents) -> None:
        self.rule = rule
        self._hist = np.full((rule.window, 0), np.nan)  # oldest first

    def mark(self, norms: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """The marks (``SPIKE``/``COLLAPSE`` bits, uint8) of these steps, updating the history."""
        steps, voices = norms.shape
        rule = self.rule
        if self._hist.shape[1] < voices:  # voices added during the run
            grown = np.full((rule.window, voices), np.nan)
            grown[:, : self._hist.shape[1]] = self._hist
            self._hist = grown
        x = norms.astype(np.float64)
        ok = np.isfinite(x) & ~missing
        w = rule.window
        seq = np.concatenate([self._hist[:, :voices], np.where(ok, x, np.nan)])
        if self._hist.shape[1] == voices:
            self._hist = seq[-w:]
        else:
            self._hist = np.concatenate([seq[-w:], self._hist[-w:, voices:]], axis=1)
        # every step's window as a view [steps, voices, window] (sliding_window_view's, built
        # directly: a live block is one step and the worker wakes for it, so calls count)
        s0, s1 = seq.strides
        windows = np.ndarray((steps, voices, w), np.float64, seq, 0, (s0, s1, s0))
        ordered = np.sort(windows, axis=-1)  # NaN last
        known = np.count_nonzero(~np.isnan(windows), axis=-1)
        if known.min(initial=w) == w:  # every window full (after the first ``window`` steps)
            lo, hi = ordered[..., (w - 1) // 2], ordered[..., w // 2]
        else:
            lo = np.take_along_axis(ordered, np.maximum(known - 1, 0)[..., None] // 2, -1)[..., 0]
            hi = np.take_along_axis(ordered, (known // 2)[..., None], -1)[..., 0]
        with np.errstate(invalid="ignore"):
            med = np.where(known > 0, 0.5 * (lo + hi), np.nan)
            spike = ok & (known >= rule.min_history) & (med > 0) & (x >= rule.spike_factor * med)
            collapse = ok & (med > 0) & (x <= rule.collapse_factor * med)
        return spike.astype(np.uint8) | collapse.astype(np.uint8) * COLLAPSE


def marks_of(norms: np.ndarray, missing: np.ndarray, settings: Any, chunk: int = 512
             ) -> np.ndarray:
    """The accent marks of a whole run's ``[steps, voices]`` norms, made block by block exactly
    as the live worker made them (``settings``: a recording's ``"accents"`` entry; all 0 when
    accents were off)."""
    rule = resolve_accents(settings)
    marks = np.zeros(norms.shape, dtype=np.uint8)
    if rule is not None:
        detector = AccentDetector(rule)
        for lo in range(0, len(norms), chunk):
            marks[lo:lo + chunk] = detector.mark(norms[lo:lo + chunk], missing[lo:lo + chunk])
    return marks

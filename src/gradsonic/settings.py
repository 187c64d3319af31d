"""How a run sounds: the mapping, the synth, accents and ``every`` as one settings object.

:class:`SoundSettings` validates the sound options of :class:`~gradsonic.GradientSonifier` (each
part checks its own: :func:`~gradsonic.mapping.resolve_mapping`, :class:`~gradsonic.synth.Synth`,
:func:`~gradsonic.accents.resolve_accents`), and :meth:`SoundSettings.as_dict` is exactly what a
recording stores, so :mod:`gradsonic.render` can play a run again bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .accents import Accents, resolve_accents
from .errors import ConfigError
from .mapping import MappingLike, mapping_settings, resolve_mapping
from .synth import Synth


@dataclass(frozen=True)
class SoundSettings:
    """The sound of a run: ``mapping`` (norm -> Hz), ``synth`` (tones, layout, amplitude),
    ``accents`` (or None) and ``every`` (sound every Nth step, and every alarm)."""

    mapping: Callable[[np.ndarray], np.ndarray]
    synth: Synth
    accents: Accents | None
    every: int

    @classmethod
    def from_options(cls, mapping: MappingLike = "log", sample_rate: int = 44100,
                     tone_duration: float = 0.01, silence_duration: float | None = None,
                     amplitude: float = 0.1, layout: str = "sequence",
                     accents: bool | Accents = True, every: int = 1) -> "SoundSettings":
        resolved = resolve_mapping(mapping)
        synth = Synth(sample_rate, tone_duration, silence_duration, amplitude, layout)
        rule = resolve_accents(accents)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be an integer >= 1 (sound every Nth step), not "
                              f"{every!r}")
        return cls(resolved, synth, rule, every)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a recording stores them (enough to re-render it)."""
        synth = self.synth
        return {"mapping": mapping_settings(self.mapping), "sample_rate": synth.sample_rate,
                "tone_duration": synth.tone_duration,
                "silence_duration": synth.silence_duration, "amplitude": synth.amplitude,
                "layout": synth.layout.value,
                "accents": self.accents.settings() if self.accents is not None else None,
                "every": self.every}

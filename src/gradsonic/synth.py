"""Tone plans -> float32 audio frames.

Layout of one step (the 2019 experiment's): one tone per layer, in layer order, each
``tone_samples`` long, then ``silence_samples`` of silence.

The samples of a tone at frequency ``f`` (clamped to ``[20 Hz, 0.45 * sample_rate]``) are exactly::

    x[n] = amplitude * env[n] * sin(2 * pi * f * n / sample_rate),   n = 0 .. tone_samples - 1

computed in float64 and stored as float32. ``env`` is 1 except for a raised-cosine fade of
``F = min(round(0.001 * sample_rate), tone_samples // 4)`` samples at each end
(``env[n] = env[T-1-n] = 0.5 - 0.5 * cos(pi * (n + 1) / (F + 1))`` for ``n < F``), which removes the
click of a tone that stops mid-cycle. Each tone starts at phase 0, as in the original.

A layer with no gradient is silence. A NaN/Inf norm is the *alarm*: a fixed burst of white noise
(seeded, so every alarm and every re-render is identical) at the same amplitude and envelope -
unmistakable among sine tones, and never a NaN/Inf sample.
"""

from __future__ import annotations

import math

import numpy as np

from ._options import check_number
from .errors import ConfigError
from .mapping import ALARM, TONE

MIN_HZ = 20.0
NYQUIST_FRACTION = 0.45
FADE_SECONDS = 0.001
ALARM_SEED = 0x6A5


class Synth:
    """Renders many steps at once; stateless between calls (each tone starts at phase 0)."""

    def __init__(self, sample_rate: int = 44100, tone_duration: float = 0.01,
                 silence_duration: float | None = None, amplitude: float = 0.1) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise ConfigError(f"sample_rate must be an integer number of Hz, not {sample_rate!r}")
        if not 8000 <= sample_rate <= 768000:
            raise ConfigError(f"sample_rate must be in [8000, 768000] Hz, not {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        check_number(tone_duration, "tone_duration (seconds)")
        if silence_duration is None:
            silence_duration = 2 * tone_duration
        check_number(silence_duration, "silence_duration (seconds)", allow_low=True)
        self.amplitude = check_number(amplitude, "amplitude", high=1.0)
        self.tone_duration = float(tone_duration)
        self.silence_duration = float(silence_duration)
        self.tone_samples = round(self.tone_duration * self.sample_rate)
        if self.tone_samples < 1:
            raise ConfigError(
                f"tone_duration={tone_duration!r} s at sample_rate={sample_rate} gives a tone of 0 "
                f"samples; it must be at least 1/sample_rate = {1 / sample_rate:.3g} s")
        self.silence_samples = round(self.silence_duration * self.sample_rate)
        self.min_hz = MIN_HZ
        self.max_hz = NYQUIST_FRACTION * self.sample_rate

        fade = min(round(FADE_SECONDS * self.sample_rate), self.tone_samples // 4)
        env = np.ones(self.tone_samples, dtype=np.float64)
        if fade:
            ramp = 0.5 - 0.5 * np.cos(math.pi * np.arange(1, fade + 1) / (fade + 1))
            env[:fade] = ramp
            env[-fade:] = ramp[::-1]
        self.fade_samples = fade
        self._env = env
        self._n = np.arange(self.tone_samples, dtype=np.float64)
        noise = np.random.default_rng(ALARM_SEED).uniform(-1.0, 1.0, self.tone_samples)
        self._alarm = (self.amplitude * env * noise).astype(np.float32)

    def step_samples(self, n_layers: int) -> int:
        """Number of frames one step of ``n_layers`` tones occupies."""
        return n_layers * self.tone_samples + self.silence_samples

    def clamp(self, freqs: np.ndarray) -> np.ndarray:
        """Frequencies held inside ``[20 Hz, 0.45 * sample_rate]``; NaN goes to the lowest."""
        f = np.nan_to_num(np.asarray(freqs, dtype=np.float64), nan=self.min_hz,
                          posinf=self.max_hz, neginf=self.min_hz)
        return np.clip(f, self.min_hz, self.max_hz)

    def render(self, freqs: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """Frames for ``[steps, layers]`` frequencies and kinds, as one float32 mono block."""
        freqs = self.clamp(freqs)
        steps, layers = freqs.shape
        tones = np.zeros((steps, layers, self.tone_samples), dtype=np.float32)
        is_tone = kinds == TONE
        if is_tone.any():
            f = freqs[is_tone]
            phase = (2.0 * math.pi / self.sample_rate) * f[:, None] * self._n[None, :]
            tones[is_tone] = self.amplitude * self._env * np.sin(phase)
        is_alarm = kinds == ALARM
        if is_alarm.any():
            tones[is_alarm] = self._alarm
        out = np.zeros((steps, self.step_samples(layers)), dtype=np.float32)
        out[:, : layers * self.tone_samples] = tones.reshape(steps, -1)
        return out.reshape(-1)

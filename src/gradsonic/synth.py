"""Tone plans -> float32 audio frames.

Three layouts of one step:

* ``"sequence"`` (default; the 2019 experiment's, mono): one tone per voice, in voice order, each
  ``tone_samples`` long, then ``silence_samples`` of silence.
* ``"chord"`` (stereo): all voices at once for one tone length, then the silence - a step lasts one
  tone whatever the model. Voice ``i`` of ``n`` is panned by depth, from the left (the input side)
  to the right (the output side), with constant power: left ``cos(theta)``, right ``sin(theta)``,
  ``theta = pi/2 * i / (n - 1)``; the sum is divided by ``sqrt(n)`` and clipped to [-1, 1].
* ``"ambient"`` (stereo): one calm, continuous chord for long listening, gliding from step to
  step, which accents and alarms cut through (:mod:`gradsonic.ambient`). A step lasts
  ``tone_samples + silence_samples``, like the chord layout's.

The samples of a tone at frequency ``f`` (clamped to ``[20 Hz, 0.45 * sample_rate]``) are exactly::

    x[n] = amplitude * env[n] * sin(2 * pi * f * n / sample_rate),   n = 0 .. tone_samples - 1

computed in float64 and stored as float32. ``env`` is 1 except for a raised-cosine fade of
``F = min(round(0.001 * sample_rate), tone_samples // 4)`` samples at each end
(``env[n] = env[T-1-n] = 0.5 - 0.5 * cos(pi * (n + 1) / (F + 1))`` for ``n < F``), which removes the
click of a tone that stops mid-cycle. Each tone starts at phase 0, as in the original.

A layer with no gradient is silence. A NaN/Inf norm is the *alarm*: a fixed burst of white noise
(seeded, so every alarm and every re-render is identical) with the tones' envelope at
``ALARM_GAIN`` (4) times their amplitude, clipped to [-1, 1] - about 10 dB louder than a tone and
unmistakable among them, and never a NaN/Inf sample. A pitch beyond the mapping's band
(kind ``OVER``) plays at the band's edge with the *over-range* timbre: the same sine plus its 3rd
and 5th harmonics (those below the alias-free limit), ``x = (s1 + 0.5 s3 + 0.25 s5) / 1.1278`` with
``sk = sin(2 pi k f n / sample_rate)`` (1.1278 is that sum's peak, so it never exceeds
``amplitude``) - a bright buzz at about the same loudness (RMS 0.72 of ``amplitude`` vs 0.71).

Accents (:mod:`gradsonic.accents`) change a tone's loudness, not its pitch: an accented tone is
multiplied by ``1 + 1.5 * exp(-n / (3 ms))`` (2.5x at its onset, decaying to normal), and a
*spike* adds a click, ``1.5 * amplitude * noise[n] * exp(-n / (0.5 ms))`` with a fixed seeded noise;
samples are clipped to [-1, 1].
"""

from __future__ import annotations

import math

import numpy as np

from ._options import StrEnum, check_number
from .errors import ConfigError
from .accents import COLLAPSE, SPIKE
from .ambient import Ambient, pan
from .mapping import ALARM, OVER, SILENT, TONE

MIN_HZ = 20.0
MAX_TONE_SECONDS = 10.0  # a tone or silence longer than this is a mistake (and memory)
NYQUIST_FRACTION = 0.45
FADE_SECONDS = 0.001
ALARM_SEED = 0x6A5
OVER_PEAK = 1.1278091066  # max of sin x + 0.5 sin 3x + 0.25 sin 5x
ALARM_GAIN = 4.0  # the alarm's noise against a tone's amplitude: ~+10 dB over a sine's level
_CHUNK_TONES = 128  # tones rendered per inner pass


class Layout(StrEnum):
    SEQUENCE = "sequence"
    CHORD = "chord"
    AMBIENT = "ambient"


class Synth:
    """Renders many steps at once; stateless between calls (each tone starts at phase 0)."""

    def __init__(self, sample_rate: int = 44100, tone_duration: float = 0.01,
                 silence_duration: float | None = None, amplitude: float = 0.1,
                 layout: str = "sequence") -> None:
        self.layout = Layout.parse(layout, "layout")
        #: 1 (mono) for the sequence layout, 2 (stereo) for the chord and ambient layouts
        self.channels = 1 if self.layout is Layout.SEQUENCE else 2
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise ConfigError(f"sample_rate must be an integer number of Hz, not {sample_rate!r}")
        if not 8000 <= sample_rate <= 768000:
            raise ConfigError(f"sample_rate must be in [8000, 768000] Hz, not {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        check_number(tone_duration, "tone_duration (seconds)", high=MAX_TONE_SECONDS)
        if silence_duration is None:
            silence_duration = 2 * tone_duration
        check_number(silence_duration, "silence_duration (seconds)", allow_low=True,
                     high=MAX_TONE_SECONDS)
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
        self._amp_env = (self.amplitude * env).astype(np.float32)
        self._n_over_fs = np.arange(self.tone_samples, dtype=np.float64) / self.sample_rate
        noise = np.random.default_rng(ALARM_SEED).uniform(-1.0, 1.0, self.tone_samples)
        self._alarm = np.clip(ALARM_GAIN * self.amplitude * env * noise, -1.0, 1.0).astype(
            np.float32)
        n = np.arange(self.tone_samples, dtype=np.float64)
        self._accent_gain = (1.0 + 1.5 * np.exp(-n / (0.003 * self.sample_rate))).astype(
            np.float32)
        click = np.random.default_rng(ALARM_SEED + 1).uniform(-1.0, 1.0, self.tone_samples)
        self._click = (1.5 * self.amplitude * click * np.exp(-n / (0.0005 * self.sample_rate))
                       ).astype(np.float32)
        self._ambient = None
        if self.layout is Layout.AMBIENT:  # (its alarm: the same noise, at its own level)
            self._ambient = Ambient(self.sample_rate, self.tone_samples + self.silence_samples,
                                    self.amplitude, self.max_hz, noise * env, self._click)
        self._buf64: np.ndarray | None = None
        self._tmp64: np.ndarray | None = None
        self._buf32: np.ndarray | None = None

    def tables(self) -> dict[str, np.ndarray]:
        """The per-sample tables every tone is made with (float32, ``tone_samples`` long): the
        amplitude envelope, the alarm noise, the spike click and the accent gain - what the
        browser page (``gradsonic serve``) needs to play exactly these samples."""
        out = {"amp_env": self._amp_env, "alarm": self._alarm, "click": self._click,
               "accent_gain": self._accent_gain}
        if self._ambient is not None:
            out.update(self._ambient.tables())
        return out

    def step_samples(self, n_layers: int) -> int:
        """Number of frames one step of ``n_layers`` voices occupies."""
        if self.layout is not Layout.SEQUENCE:
            return self.tone_samples + self.silence_samples
        return n_layers * self.tone_samples + self.silence_samples

    def clamp(self, freqs: np.ndarray) -> np.ndarray:
        """Frequencies held inside ``[20 Hz, 0.45 * sample_rate]``; NaN goes to the lowest."""
        f = np.clip(np.asarray(freqs, dtype=np.float64), self.min_hz, self.max_hz)
        f[np.isnan(f)] = self.min_hz  # (clip keeps NaN; +-inf are clipped already)
        return f

    def _scratch(self, tones: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Work buffers reused across calls (large fresh arrays cost page faults every call)."""
        if self._buf64 is None or self._buf64.shape[0] < tones:
            rows = max(tones, 64)
            self._buf64 = np.empty((rows, self.tone_samples), dtype=np.float64)
            self._tmp64 = np.empty((rows, self.tone_samples), dtype=np.float64)
            self._buf32 = np.empty((rows, self.tone_samples), dtype=np.float32)
        assert self._tmp64 is not None and self._buf32 is not None
        return self._buf64[:tones], self._tmp64[:tones], self._buf32[:tones]

    def render(self, freqs: np.ndarray, kinds: np.ndarray, marks: np.ndarray | None = None,
               prev: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Frames for ``[steps, layers]`` frequencies and kinds (and accent marks), as one
        float32 block: ``[frames]`` (sequence, mono) or ``[frames, 2]`` (chord and ambient,
        stereo). ``prev``: the (freqs, kinds) of the sounded step before the first, which the
        ambient layout glides from (the others ignore it).

        Not thread-safe (it reuses work buffers): one synth per worker thread.
        """
        if self._ambient is not None:
            before = None if prev is None else (self.clamp(prev[0]), np.asarray(prev[1]))
            return self._ambient.render(self.clamp(freqs), kinds, marks, before)
        if self.layout is Layout.CHORD:
            return self._chord(self._sequence(freqs, kinds, marks), *np.shape(freqs))
        return self._sequence(freqs, kinds, marks)

    def _chord(self, sequence: np.ndarray, steps: int, voices: int) -> np.ndarray:
        T = self.tone_samples
        tones = sequence.reshape(steps, voices * T + self.silence_samples)[:, : voices * T]
        tones = tones.reshape(steps, voices, T)
        gains = pan(voices).T / math.sqrt(max(voices, 1))  # [2, V]
        out = np.zeros((steps, T + self.silence_samples, 2), dtype=np.float32)
        out[:, :T, :] = np.einsum("cv,svt->stc", gains, tones)
        np.clip(out, -1.0, 1.0, out=out)
        return out.reshape(-1, 2)

    def _sequence(self, freqs: np.ndarray, kinds: np.ndarray,
                  marks: np.ndarray | None = None) -> np.ndarray:
        freqs = self.clamp(freqs)
        steps, layers = freqs.shape
        T = self.tone_samples
        out = np.zeros((steps, layers * T + self.silence_samples), dtype=np.float32)
        tones = out[:, : layers * T].reshape(steps, layers, T)  # a view into out
        chunk = max(1, _CHUNK_TONES // max(layers, 1))  # steps per pass, buffers stay in cache
        for lo in range(0, steps, chunk):
            hi = min(steps, lo + chunk)
            n = (hi - lo) * layers
            if n == 0:
                continue
            # Phase in cycles, reduced to [0, 1) in float64, then one float32 (SIMD) sine:
            # accurate to ~1e-7 of full scale at any frequency and tone length.
            cycles, whole, arg = self._scratch(n)
            np.multiply(freqs[lo:hi].reshape(n, 1), self._n_over_fs, out=cycles)
            np.floor(cycles, out=whole)
            np.subtract(cycles, whole, out=cycles)
            np.multiply(cycles, 2.0 * math.pi, out=arg, casting="same_kind")
            np.sin(arg, out=arg)
            np.multiply(arg.reshape(hi - lo, layers, T), self._amp_env, out=tones[lo:hi])
        if (kinds != TONE).any():
            tones[kinds == SILENT] = 0.0
            tones[kinds == ALARM] = self._alarm
            over = kinds == OVER
            if over.any():
                tones[over] = self._over(freqs[over])
        if marks is not None and marks.any():
            sounding = (kinds == TONE) | (kinds == OVER)
            accented = sounding & (marks & (SPIKE | COLLAPSE) > 0)
            tones[accented] *= self._accent_gain
            tones[sounding & (marks & SPIKE > 0)] += self._click
            np.clip(tones, -1.0, 1.0, out=tones)
        return out.reshape(-1)

    def _over(self, freqs: np.ndarray) -> np.ndarray:
        """The over-range timbre for these frequencies: ``[len(freqs), tone_samples]``."""
        x = np.zeros((len(freqs), self.tone_samples), dtype=np.float64)
        for k, weight in ((1, 1.0), (3, 0.5), (5, 0.25)):
            f = k * freqs[:, None]
            cycles = f * self._n_over_fs
            wave = weight * np.sin(2.0 * math.pi * (cycles - np.floor(cycles)))
            x += np.where(f <= self.max_hz, wave, 0.0)
        return (x / OVER_PEAK * self._amp_env).astype(np.float32)

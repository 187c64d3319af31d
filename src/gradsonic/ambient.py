"""The ambient layout: a calm, continuous chord for long listening, which trouble cuts through.

Every voice sounds for the whole step (``tone_samples + silence_samples``: a fixed duration, so
the WAV stays aligned with the steps as in the chord layout), panned by depth like the chord
layout, at a fraction of the tones' level. Three choices make it smooth enough to keep on for
hours:

* **Notes that never click or beat.** A voice's pitch is snapped to the nearest note of a fixed
  grid: the harmonics ``k * rate / S`` of the step rate (``S`` = samples per step; 33.3 Hz at
  the defaults) with ``k`` in 4, 5, 6, 8, 10, 12, 16, ... (major triads, octave after octave,
  from 110 Hz to 5 kHz). Each note completes a whole number of cycles per step, so it
  starts every step at phase 0 and joins the previous step without a seam; neighbouring notes are
  at least a minor third apart, so voices do not beat against each other; voices on one note
  are one oscillator.
* **Glides, not steps.** Each note's level moves from the previous step's to this step's over
  the first third of the step (a raised-cosine ramp): changes are heard as swells.
* **Quiet.** Each voice is ``AMBIENT_GAIN * amplitude / sqrt(voices)`` per channel (about
  -33 LUFS for healthy training at the default amplitude). Samples above 0.5 bend smoothly
  towards 1 (a soft knee), so a burst of accents never clips.

What must be heard cuts through: an *accent* (spike or collapse) rings a bell on the voice's
note, ``BELL_GAIN`` louder and decaying over ~15 ms, a spike with the click of the other layouts;
a value beyond the mapping's band adds the octave above (a brighter sound); an *alarm* (a NaN/Inf
voice, or a step the optimizer skipped) replaces the whole step's chord with a burst of noise at
``ALARM_GAIN * amplitude`` (over 20 dB above the healthy chord, and unlike any tone).

Rendering needs the previous sounded step's tones (``prev``): the worker keeps them, ``render``
and the page look them up, so any slice of a run sounds as the live run did.
"""

from __future__ import annotations

import math

import numpy as np

from .accents import COLLAPSE, SPIKE
from .mapping import ALARM, OVER, TONE

AMBIENT_GAIN = 0.10
BELL_GAIN = 18.0  # an accent's bell, against one voice's chord level
BELL_SECONDS = 0.015
KNEE = 0.5  # above this level samples bend smoothly towards 1 instead of clipping
ALARM_GAIN = 4.0  # the alarm burst, against amplitude (uniform noise: RMS 0.58 of that)
RAMP_FRACTION = 1.0 / 3.0
NOTE_FLOOR_HZ = 110.0
NOTE_CEILING_HZ = 5000.0  # higher notes would be shrill for hours
TRIAD = (4, 5, 6)


def pan(voices: int) -> np.ndarray:
    """``[voices, 2]`` constant-power gains (left ``cos``, right ``sin`` of
    ``pi/2 * i / (voices - 1)``): voices panned by depth, the chord and ambient layouts'."""
    theta = (0.5 * math.pi * np.arange(voices) / (voices - 1) if voices > 1
             else np.full(voices, 0.25 * math.pi))
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def note_grid(sample_rate: int, step_samples: int, max_hz: float) -> np.ndarray:
    """The harmonics ``k`` of the step rate the ambient layout plays, ascending."""
    base = sample_rate / step_samples
    ks = sorted({r * 2 ** o for r in TRIAD for o in range(24)})
    top = min(max_hz, NOTE_CEILING_HZ)
    return np.array([k for k in ks if NOTE_FLOOR_HZ <= k * base <= top] or [ks[0]],
                    dtype=np.int64)


class Ambient:
    """Renders steps of the ambient layout (stereo) for one synth's settings."""

    def __init__(self, sample_rate: int, step_samples: int, amplitude: float, max_hz: float,
                 alarm_noise: np.ndarray, click: np.ndarray) -> None:
        self.S = step_samples
        self.sample_rate = sample_rate
        self.amplitude = amplitude
        self.ks = note_grid(sample_rate, step_samples, max_hz)
        self.note_hz = self.ks * (sample_rate / step_samples)
        n = np.arange(step_samples, dtype=np.float64)
        # sin(2 pi k n / S): whole cycles per step, so every step starts at phase 0
        self.waves = np.sin(2.0 * math.pi * np.outer(self.ks, n) / step_samples)  # [notes, S]
        r = max(1, round(RAMP_FRACTION * step_samples))
        self.ramp = np.ones(step_samples)
        self.ramp[:r] = 0.5 - 0.5 * np.cos(math.pi * np.arange(r) / r)
        self.bell_env = np.exp(-n / (BELL_SECONDS * sample_rate))
        fade = min(round(0.001 * sample_rate), step_samples // 4)
        env = np.ones(step_samples)
        if fade:
            ramp = 0.5 - 0.5 * np.cos(math.pi * np.arange(1, fade + 1) / (fade + 1))
            env[:fade], env[-fade:] = ramp, ramp[::-1]
        reps = -(-step_samples // len(alarm_noise))
        noise = np.tile(alarm_noise / max(float(np.max(np.abs(alarm_noise))), 1e-12), reps)
        self.alarm = ALARM_GAIN * amplitude * env * noise[:step_samples]
        self.click = np.zeros(step_samples)
        self.click[:min(len(click), step_samples)] = click[:step_samples]

    def tables(self) -> dict[str, np.ndarray]:
        """What the browser page needs to play the ambient layout exactly: the note grid and
        the per-sample tables of one step."""
        return {"ambient_ks": self.ks.astype(np.float32), "ambient_ramp": self.ramp.astype(np.float32),
                "ambient_bell": self.bell_env.astype(np.float32),
                "ambient_alarm": self.alarm.astype(np.float32),
                "ambient_click": self.click.astype(np.float32),
                "ambient_gain": np.array([AMBIENT_GAIN * self.amplitude, BELL_GAIN], np.float32)}

    def notes(self, freqs: np.ndarray) -> np.ndarray:
        """The grid note nearest each frequency (in octaves)."""
        d = np.abs(np.log2(np.maximum(freqs, 1e-9))[..., None] - np.log2(self.note_hz))
        return np.argmin(d, axis=-1)

    def levels(self, freqs: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """``[steps, notes, 2]``: each note's level per channel (voices panned by depth)."""
        steps, voices = kinds.shape
        gains = pan(voices)  # [V, 2]
        gain = AMBIENT_GAIN * self.amplitude / math.sqrt(max(voices, 1))
        out = np.zeros((steps, len(self.ks), 2))
        sounding = (kinds == TONE) | (kinds == OVER)
        if sounding.any():
            s, v = np.nonzero(sounding)
            note = self.notes(freqs[s, v])
            np.add.at(out, (s, note), gain * gains[v])
            over = kinds[s, v] == OVER  # beyond the band: the octave above joins in
            if over.any():
                up = np.minimum(self.notes(2.0 * freqs[s, v][over]), len(self.ks) - 1)
                np.add.at(out, (s[over], up), 0.5 * gain * gains[v[over]])
        return out

    def render(self, freqs: np.ndarray, kinds: np.ndarray, marks: np.ndarray | None,
               prev: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Frames ``[steps * S, 2]`` for ``[steps, voices]`` frequencies (clamped) and kinds;
        ``prev``: the (freqs, kinds) of the sounded step before the first, if any."""
        steps, voices = kinds.shape
        cur = self.levels(freqs, kinds)
        before = np.zeros_like(cur)
        if steps > 1:
            before[1:] = cur[:-1]
        if prev is not None:
            pf, pk = (np.asarray(a).reshape(1, -1) for a in prev)
            if pk.shape[1] < voices:  # voices were added since: they were silent then
                pad = voices - pk.shape[1]
                pf = np.concatenate([pf, np.zeros((1, pad))], axis=1)
                pk = np.concatenate([pk, np.full((1, pad), -1, dtype=pk.dtype)], axis=1)
            before[0] = self.levels(pf[:, :voices], pk[:, :voices])[0]
        held = np.einsum("skc,kn->snc", before, self.waves)
        new = np.einsum("skc,kn->snc", cur, self.waves)
        out = held + (new - held) * self.ramp[None, :, None]  # [steps, S, 2]
        if marks is not None and marks.any():
            self._accents(out, freqs, kinds, marks)
        alarm = (kinds == ALARM).any(axis=1)
        if alarm.any():
            out[alarm] = self.alarm[None, :, None]
        loud = np.abs(out) > KNEE  # a soft knee: many accents at once never clip
        if loud.any():
            x = out[loud]
            out[loud] = np.sign(x) * (KNEE + (1.0 - KNEE) * np.tanh((np.abs(x) - KNEE)
                                                                    / (1.0 - KNEE)))
        return out.astype(np.float32).reshape(-1, 2)

    def _accents(self, out: np.ndarray, freqs: np.ndarray, kinds: np.ndarray,
                 marks: np.ndarray) -> None:
        sounding = (kinds == TONE) | (kinds == OVER)
        accented = sounding & ((marks & (SPIKE | COLLAPSE)) > 0)
        if not accented.any():
            return
        voices = kinds.shape[1]
        gains = pan(voices)
        gain = BELL_GAIN * AMBIENT_GAIN * self.amplitude / math.sqrt(max(voices, 1))
        s, v = np.nonzero(accented)
        bell = self.waves[self.notes(freqs[s, v])] * self.bell_env  # [n, S]
        spike = (marks[s, v] & SPIKE) > 0
        for c, g in enumerate(gains.T):
            np.add.at(out[:, :, c], s, gain * g[v][:, None] * bell)
            if spike.any():  # the spike's click, as in the other layouts
                np.add.at(out[:, :, c], s[spike], 0.5 * self.click[None, :])

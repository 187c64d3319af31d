// gradsonic's mapping and synth in the browser: the same numbers as src/gradsonic/mapping.py
// (plan_tones, LogMapping, SeedMapping) and src/gradsonic/synth.py (Synth.render), so a page
// plays exactly what `gradsonic render` writes. The tone envelope, the alarm noise, the click and
// the accent gain come from the server as tables (GET /api/run), computed by the Python synth.
"use strict";

const TONE = 0, SILENT = 1, ALARM = 2, OVER = 3;
const MISSING_BIT = 1, SPIKE_BIT = 2, COLLAPSE_BIT = 4;  // the per-voice byte of a batch
const SCALES = {
  chromatic: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], major: [0, 2, 4, 5, 7, 9, 11],
  minor: [0, 2, 3, 5, 7, 8, 10], pentatonic: [0, 2, 4, 7, 9],
};

function decodeBase64(text, Type) {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}

// The nearest semitone of the scale (numpy's argmin: the first of equal distances).
function snap(semitones, degrees) {
  if (!Number.isFinite(semitones)) return semitones;
  const octave = Math.floor(semitones / 12);
  const within = semitones - 12 * octave;
  let best = 0, bestDist = Infinity;
  for (const k of [-1, 0, 1]) {
    for (const d of degrees) {
      const g = d + 12 * k, dist = Math.abs(within - g);
      if (dist < bestDist) { bestDist = dist; best = g; }
    }
  }
  return 12 * octave + best;
}

// {hz(norm), band: [lo, hi]} for a mapping's settings (kind "log" or "seed").
function makeMapping(m) {
  if (m.kind === "seed") {
    return { hz: (x) => m.offset_hz + m.hz_per_unit * x, band: [m.min_hz, m.max_hz] };
  }
  const scale = m.scale ? SCALES[m.scale] : null;
  const logCenter = Math.log10(m.center_norm);
  return {
    band: [m.min_hz, m.max_hz],
    hz(x) {
      const octaves = m.octaves_per_decade * (Math.log10(x) - logCenter);
      let f = m.center_hz * Math.pow(2, octaves);
      if (scale) f = m.center_hz * Math.pow(2, snap(12 * octaves, scale) / 12);
      if (Number.isNaN(f) || f === -Infinity) return 0;
      return f;
    },
  };
}

// plan_tones for one step: frequencies and kinds of its voices.
function planStep(mapping, norms, bits, skipped, freqs, kinds) {
  const [lo, hi] = mapping.band;
  for (let v = 0; v < norms.length; v++) {
    const x = norms[v];
    freqs[v] = 0;
    if (bits[v] & MISSING_BIT) kinds[v] = SILENT;
    else if (!Number.isFinite(x)) kinds[v] = ALARM;
    else {
      let hz = mapping.hz(Math.abs(x));
      kinds[v] = TONE;
      if (!(hz >= lo) || hz > hi) {
        kinds[v] = OVER;
        hz = Number.isNaN(hz) ? lo : Math.min(Math.max(hz, lo), hi);
      }
      freqs[v] = hz;
    }
    if (skipped) { kinds[v] = ALARM; freqs[v] = 0; }
  }
}

class Synth {
  constructor(s) {
    this.rate = s.sample_rate;
    this.T = s.tone_samples;
    this.S = s.silence_samples;
    this.chord = s.layout === "chord";
    this.channels = s.channels;
    this.minHz = s.min_hz;
    this.maxHz = s.max_hz;
    this.overPeak = s.over_peak;
    this.env = decodeBase64(s.amp_env, Float32Array);
    this.alarm = decodeBase64(s.alarm, Float32Array);
    this.click = decodeBase64(s.click, Float32Array);
    this.gain = decodeBase64(s.accent_gain, Float32Array);
    this.tone = new Float32Array(this.T);
  }

  stepSamples(voices) { return this.chord ? this.T + this.S : voices * this.T + this.S; }

  clamp(f) {
    if (Number.isNaN(f)) return this.minHz;
    return Math.min(Math.max(f, this.minHz), this.maxHz);
  }

  // One voice's tone into this.tone (float32, as the Python synth stores it).
  renderTone(freq, kind, mark) {
    const T = this.T, out = this.tone, env = this.env, f = this.clamp(freq);
    if (kind === SILENT) { out.fill(0); return; }
    if (kind === ALARM) { out.set(this.alarm); return; }
    if (kind === OVER) {
      for (let n = 0; n < T; n++) {
        const t = n / this.rate;
        let x = 0;
        for (const [k, w] of [[1, 1.0], [3, 0.5], [5, 0.25]]) {
          if (k * f <= this.maxHz) {
            const c = (k * f) * t;
            x += w * Math.sin(2 * Math.PI * (c - Math.floor(c)));
          }
        }
        out[n] = x / this.overPeak * env[n];
      }
    } else {
      for (let n = 0; n < T; n++) {
        const c = f * (n / this.rate);
        const arg = Math.fround((c - Math.floor(c)) * (2 * Math.PI));
        out[n] = Math.fround(Math.sin(arg)) * env[n];
      }
    }
    if (mark & (SPIKE_BIT | COLLAPSE_BIT)) {
      for (let n = 0; n < T; n++) out[n] = out[n] * this.gain[n];
      if (mark & SPIKE_BIT) for (let n = 0; n < T; n++) out[n] = out[n] + this.click[n];
      for (let n = 0; n < T; n++) out[n] = Math.min(1, Math.max(-1, out[n]));
    }
  }

  // One step of `voices` voices into channel arrays `chans` at `offset`; `silent[v]` mutes.
  renderStep(freqs, kinds, bits, voices, chans, offset, silent) {
    const T = this.T;
    if (!this.chord) {
      for (let v = 0; v < voices; v++) {
        this.renderTone(freqs[v], silent && silent[v] ? SILENT : kinds[v], bits[v]);
        chans[0].set(this.tone, offset + v * T);
      }
      return;
    }
    const norm = Math.sqrt(Math.max(voices, 1));
    const acc = [new Float64Array(T), new Float64Array(T)];
    for (let v = 0; v < voices; v++) {
      const theta = voices > 1 ? 0.5 * Math.PI * v / (voices - 1) : 0.25 * Math.PI;
      const g = [Math.cos(theta) / norm, Math.sin(theta) / norm];
      this.renderTone(freqs[v], silent && silent[v] ? SILENT : kinds[v], bits[v]);
      for (let c = 0; c < 2; c++) for (let n = 0; n < T; n++) acc[c][n] += g[c] * this.tone[n];
    }
    for (let c = 0; c < 2; c++) {
      for (let n = 0; n < T; n++) chans[c][offset + n] = Math.min(1, Math.max(-1, acc[c][n]));
    }
  }
}

window.GradsonicSynth = { Synth, makeMapping, planStep, decodeBase64, TONE, SILENT, ALARM, OVER,
  MISSING_BIT, SPIKE_BIT, COLLAPSE_BIT };

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
    this.amb = null;
    if (s.layout === "ambient") {  // src/gradsonic/ambient.py's tables
      const N = this.T + this.S, ks = decodeBase64(s.ambient_ks, Float32Array);  // (tables come as float32)
      const gains = decodeBase64(s.ambient_gain, Float32Array);
      const waves = new Float64Array(ks.length * N);
      for (let k = 0; k < ks.length; k++) {
        for (let n = 0; n < N; n++) waves[k * N + n] = Math.sin(2.0 * Math.PI * (ks[k] * n) / N);
      }
      this.amb = { ks, waves, noteHz: Array.from(ks, (k) => k * (this.rate / N)),
                   gain: gains[0], bellGain: gains[1],
                   ramp: decodeBase64(s.ambient_ramp, Float32Array),
                   bellEnv: decodeBase64(s.ambient_bell, Float32Array),
                   alarm: decodeBase64(s.ambient_alarm, Float32Array),
                   click: decodeBase64(s.ambient_click, Float32Array) };
    }
  }

  stepSamples(voices) { return this.chord || this.amb ? this.T + this.S : voices * this.T + this.S; }

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

  // One step of `voices` voices into channel arrays `chans` at `offset`; `silent[v]` mutes;
  // `prev` ({freqs, kinds, voices} of the sounded step before) is what the ambient layout
  // glides from.
  renderStep(freqs, kinds, bits, voices, chans, offset, silent, prev) {
    if (this.amb) { this.renderAmbient(freqs, kinds, bits, voices, chans, offset, silent, prev); return; }
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
  // ---- the ambient layout (src/gradsonic/ambient.py): one continuous chord ----

  // Each note's level per channel for one step's voices (the Python Ambient.levels).
  // (`present`: how many of the `voices` this step has; the rest are silent.)
  ambientLevels(freqs, kinds, voices, silent, present = voices) {
    const a = this.amb, K = a.ks.length, out = [new Float64Array(K), new Float64Array(K)];
    const gain = a.gain / Math.sqrt(Math.max(voices, 1));
    for (let v = 0; v < Math.min(present, voices); v++) {
      const k = silent && silent[v] ? SILENT : kinds[v];
      if (k !== TONE && k !== OVER) continue;
      const theta = voices > 1 ? 0.5 * Math.PI * v / (voices - 1) : 0.25 * Math.PI;
      const g = [Math.cos(theta), Math.sin(theta)], f = this.clamp(freqs[v]);
      const note = this.nearestNote(f);
      for (let c = 0; c < 2; c++) out[c][note] += gain * g[c];
      if (k === OVER) {
        const up = Math.min(this.nearestNote(2 * f), K - 1);
        for (let c = 0; c < 2; c++) out[c][up] += 0.5 * gain * g[c];
      }
    }
    return out;
  }

  nearestNote(f) {  // numpy's argmin over |log2 f - log2 note|: the first of equal distances
    const a = this.amb, lf = Math.log2(Math.max(f, 1e-9));
    let best = 0, bestDist = Infinity;
    for (let i = 0; i < a.noteHz.length; i++) {
      const d = Math.abs(lf - Math.log2(a.noteHz[i]));
      if (d < bestDist) { bestDist = d; best = i; }
    }
    return best;
  }

  // One step of the ambient layout; prev = {freqs, kinds, voices} of the sounded step before.
  renderAmbient(freqs, kinds, bits, voices, chans, offset, silent, prev) {
    const a = this.amb, N = this.T + this.S, K = a.ks.length;
    const cur = this.ambientLevels(freqs, kinds, voices, silent);
    const before = prev ? this.ambientLevels(prev.freqs, prev.kinds, voices, silent, prev.voices)
      : [new Float64Array(K), new Float64Array(K)];
    let alarm = false;
    for (let v = 0; v < voices; v++) if ((silent && silent[v] ? SILENT : kinds[v]) === ALARM) alarm = true;
    const gainB = a.bellGain * a.gain / Math.sqrt(Math.max(voices, 1));
    for (let c = 0; c < 2; c++) {
      const out = chans[c];
      for (let n = 0; n < N; n++) {
        let held = 0, now = 0;
        for (let k = 0; k < K; k++) {
          if (before[c][k] === 0 && cur[c][k] === 0) continue;
          const w = a.waves[k * N + n];
          held += before[c][k] * w; now += cur[c][k] * w;
        }
        out[offset + n] = held + (now - held) * a.ramp[n];
      }
      if (!alarm) {
        for (let v = 0; v < voices; v++) {  // accents: a bell on the voice's note (+ a spike's click)
          const k = silent && silent[v] ? SILENT : kinds[v];
          if ((k !== TONE && k !== OVER) || !(bits[v] & (SPIKE_BIT | COLLAPSE_BIT))) continue;
          const theta = voices > 1 ? 0.5 * Math.PI * v / (voices - 1) : 0.25 * Math.PI;
          const g = gainB * (c === 0 ? Math.cos(theta) : Math.sin(theta)), note = this.nearestNote(this.clamp(freqs[v]));
          for (let n = 0; n < N; n++) {
            out[offset + n] += g * a.waves[note * N + n] * a.bellEnv[n];
            if (bits[v] & SPIKE_BIT) out[offset + n] += 0.5 * a.click[n];
          }
        }
      } else {
        for (let n = 0; n < N; n++) out[offset + n] = a.alarm[n];
      }
      for (let n = 0; n < N; n++) {  // the soft knee (ambient.py's KNEE = 0.5)
        const x = out[offset + n], m = Math.abs(x);
        out[offset + n] = Math.fround(m > 0.5 ? Math.sign(x) * (0.5 + 0.5 * Math.tanh((m - 0.5) / 0.5)) : x);
      }
    }
  }
}

window.GradsonicSynth = { Synth, makeMapping, planStep, decodeBase64, TONE, SILENT, ALARM, OVER,
  MISSING_BIT, SPIKE_BIT, COLLAPSE_BIT };

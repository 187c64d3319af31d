// One run's view - its norm curves, pitch strip, voices and controls, drawn and played (WebAudio,
// synth.js) from rows a *source* delivers - shared by the serve page (app.js: server-sent events)
// and the notebook widget (widget.js: the kernel's comm channel). Everything is looked up inside
// the view's own root element (ids carry a prefix), so several views can live on one page.
//
// A source has: meta() -> the run's settings and synth tables (GET /api/run); connect(handlers,
// from) -> calls handlers.voices(names), rows(batch), state({writing, dropped}), bye(text),
// connection(text) (a source whose run is cut back starts its view again); rows(from, to) -> decoded batches filling a gap (or [] when the
// source sends them by itself).
"use strict";
const G = window.GradsonicSynth;
const LATENCY = 0.2;     // live: at most this much sound waits to be played (seconds)
const LOOKAHEAD = 0.5;   // history: sound scheduled ahead of the playhead (seconds)

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

function fmtNorm(x) { return Number.isFinite(x) ? x.toPrecision(3) : String(x); }

// ---- the rows of one run ------------------------------------------------------------------

class Store {
  constructor() { this.batches = []; this.next = 0; this.names = []; }

  add(b) {  // b decoded; b.first === this.next
    this.batches.push(b);
    this.next = b.first + b.n;
  }

  find(row) {  // {b, j} of a row, or null
    let lo = 0, hi = this.batches.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1, b = this.batches[mid];
      if (row < b.first) hi = mid - 1;
      else if (row >= b.first + b.n) lo = mid + 1;
      else return { b, j: row - b.first };
    }
    return null;
  }

  step(row) { const r = this.find(row); return r ? r.b.steps[r.j] : null; }

  // The first row from `row` on for which test(batch, index) holds, or null.
  nextMatch(row, test) {
    for (let i = row; i < this.next; i++) {
      const { b, j } = this.find(i);
      if (test(b, j)) return i;
    }
    return null;
  }
}

function decodeBatch(raw) {
  return {
    first: raw.first, n: raw.n, V: raw.voices,
    steps: G.decodeBase64(raw.steps, Float64Array),
    norms: G.decodeBase64(raw.norms, Float32Array),
    bits: G.decodeBase64(raw.bits, Uint8Array),
    skipped: G.decodeBase64(raw.skipped, Uint8Array),
  };
}

function sliceBatch(b, from) {  // the rows of b from row `from` on
  const k = from - b.first, V = b.V;
  return { first: from, n: b.n - k, V, steps: b.steps.subarray(k), norms: b.norms.subarray(k * V),
           bits: b.bits.subarray(k * V), skipped: b.skipped.subarray(k) };
}

function isAlarm(b, j) {
  if (b.skipped[j]) return true;
  for (let v = 0; v < b.V; v++) {
    if (!(b.bits[j * b.V + v] & G.MISSING_BIT) && !Number.isFinite(b.norms[j * b.V + v])) return true;
  }
  return false;
}

// Whether row j of b makes sound: every Nth step, and each step with an alarm whatever its
// number (gradsonic.mapping.sounded).
function isSounded(b, j, every) {
  return b.steps[j] % every === 0 || isAlarm(b, j);
}

function isAccent(b, j) {
  for (let v = 0; v < b.V; v++) if (b.bits[j * b.V + v] & (G.SPIKE_BIT | G.COLLAPSE_BIT)) return true;
  return false;
}

// ---- one run: data, plot, sound -----------------------------------------------------------

class RunView {
  constructor(root, source, prefix = "") {
    this.root = root;
    this.source = source;
    this.$ = (name) => root.querySelector(`#${prefix}${name}`);
    this.timers = [];
    this.store = new Store();
    this.pending = [];     // batches waiting for a gap to be fetched
    this.filling = false;
    this.writing = false;
    this.serverDropped = 0;
    this.muted = [];
    this.solo = -1;
    this.player = { ctx: null, playing: false, live: true, cursor: 0, end: 0, dropped: 0,
                    chunks: [], sources: [] };
    this.arrivals = [];    // [first row, last row, Date.now()] of each batch (latency checks)
    this.dirty = true;
    this.explore = null;   // the keyboard's {row, voice} in the plot
    this.alerts = false;   // alarm alerts (notification + sound), switched on by a click
    this.inAlarm = false;
  }

  async start() {
    let meta;
    try { meta = await this.source.meta(); } catch (e) {
      this.$("controls").hidden = true;
      this.$("status").textContent = e.message;
      return;
    }
    this.meta = meta;
    this.synth = new G.Synth(meta.synth);
    this.mapping = G.makeMapping(meta.mapping);
    this.writing = meta.writing;
    this.player.live = meta.writing;  // a finished run plays from its start, like a file
    this.setVoices(meta.layer_names);
    this.$("run-name").textContent = meta.name ?? meta.id;
    this.$("settings").textContent = `mapping ${meta.mapping.kind}, layout ${meta.synth.layout}, ` +
      `${meta.synth.sample_rate} Hz, tone ${(meta.settings.tone_duration * 1000).toFixed(1)} ms` +
      (meta.synth.every > 1 ? `, every ${meta.synth.every} steps` : "") +
      (meta.mapping_note ? ` - ${meta.mapping_note}` : "");
    this.connect();
    this.bind();
    // Redraw when rows arrive, but a long run (each redraw reads every row) at most every
    // 50 ms + 1 ms per 500 rows (2 s at 1M rows), so following it live costs little CPU.
    let drawn = 0;
    const draw = (now) => {
      if (this.stopped) return;
      if (this.dirty && now - drawn >= Math.min(2000, 50 + this.store.next / 500)) {
        this.dirty = false;
        drawn = now;
        this.draw();
      }
      this.drawCursor();
      requestAnimationFrame(draw);
    };
    requestAnimationFrame(draw);
    this.timers.push(setInterval(() => this.tick(), 50));
  }

  stop() {  // the view goes away (a notebook output cleared): no more drawing or sound
    this.stopped = true;
    this.timers.forEach(clearInterval);
    this.source.close?.(this.handlers);
    if (this.player.ctx) { this.cancel(); this.player.ctx.close(); }
  }

  connect() {
    this.handlers = {
      voices: (names) => this.setVoices(names),
      rows: (b) => this.receive(b),
      state: (st) => { this.writing = st.writing; this.serverDropped = st.dropped || 0; this.showStatus(); },
      bye: (text) => { this.writing = false; this.$("connection").textContent = text; this.showStatus(); },
      connection: (text) => { this.$("connection").textContent = text; },
    };
    this.source.connect(this.handlers, this.store.next);
  }

  setVoices(names) {
    this.store.names = names;
    while (this.muted.length < names.length) this.muted.push(false);
    const box = this.$("voices");
    box.replaceChildren(...names.map((name, v) => {
      const li = document.createElement("li");
      li.className = "voice";
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.setAttribute("aria-hidden", "true");
      const color = voiceColor(v);
      sw.style.background = voiceDash(v).length
        ? `repeating-linear-gradient(90deg, ${color} 0 5px, transparent 5px 8px)` : color;
      const label = document.createElement("span");
      label.dataset.testid = "voice";
      label.textContent = name;
      const mute = document.createElement("button");
      mute.textContent = "M"; mute.title = "mute this voice";
      mute.setAttribute("aria-label", `mute ${name}`);
      mute.setAttribute("aria-pressed", String(this.muted[v]));
      mute.onclick = () => { this.muted[v] = !this.muted[v]; this.setVoices(this.store.names); this.focusVoice(v, "M"); };
      const solo = document.createElement("button");
      solo.textContent = "S"; solo.title = "hear this voice alone";
      solo.setAttribute("aria-label", `hear ${name} alone`);
      solo.setAttribute("aria-pressed", String(this.solo === v));
      solo.onclick = () => { this.solo = this.solo === v ? -1 : v; this.setVoices(this.store.names); this.focusVoice(v, "S"); };
      li.append(sw, label, mute, solo);
      return li;
    }));
    this.dirty = true;
  }

  focusVoice(v, which) {  // keep the keyboard where it was after the list is rebuilt
    const li = this.$("voices").children[v];
    if (li) li.querySelectorAll("button")[which === "M" ? 0 : 1].focus();
  }

  receive(b) {
    this.pending.push(b);
    this.pending.sort((x, y) => x.first - y.first);  // rows re-sent to fill a gap come later
    this.drain();
  }

  async drain() {
    if (this.filling) return;
    while (this.pending.length) {
      let b = this.pending[0];
      if (b.first + b.n <= this.store.next) { this.pending.shift(); continue; }
      if (b.first < this.store.next) b = sliceBatch(b, this.store.next);
      if (b.first > this.store.next) {  // rows the server dropped for us: fetch them from history
        this.filling = true;
        try {
          for (const got of await this.source.rows(this.store.next, b.first)) {
            if (got.first === this.store.next) this.store.add(got);
          }
        } catch (e) { /* try again with the next batch */ }
        this.filling = false;
        if (b.first > this.store.next) return;
        continue;
      }
      this.pending.shift();
      this.store.add(b);
      if (this.alerts) this.alertOn(b);
      this.arrivals.push([b.first, b.first + b.n - 1, Date.now()]);
      if (this.arrivals.length > 10000) this.arrivals.splice(0, 5000);
      this.$("latest-step").textContent = String(b.steps[b.n - 1]);
      this.dirty = true;
    }
    this.showStatus();
  }

  showStatus() {
    const p = this.player;
    this.$("status").textContent = `${this.store.next} steps received` +
      (this.writing ? ", training now" : ", finished") +
      (this.serverDropped ? `, ${this.serverDropped} re-fetched after a slow link` : "") +
      (p.dropped ? `, ${p.dropped} steps not played (${this.$("policy").value})` : "");
    this.$("live").setAttribute("aria-pressed", String(p.live));
    this.$("play").textContent = p.playing ? "Pause" : "Play";
  }

  bind() {
    this.$("play").onclick = () => this.togglePlay();
    this.$("live").onclick = () => { const p = this.player; p.live = true; p.cursor = this.store.next; this.cancel(); this.showStatus(); };
    this.$("next-alarm").onclick = () => this.jump(isAlarm);
    this.$("next-accent").onclick = () => this.jump(isAccent);
    for (const id of ["plot", "strip"]) {
      this.$(id).onclick = (e) => {
        const rect = e.target.getBoundingClientRect();
        const row = Math.floor((e.clientX - rect.left) / rect.width * this.store.next);
        this.seek(Math.max(0, Math.min(row, this.store.next - 1)), true);
        this.explore = null;
      };
      this.$(id).onmousemove = (e) => this.hover(e, id === "strip");
    }
    if (window.ResizeObserver) new ResizeObserver(() => { this.dirty = true; }).observe(this.$("plot"));
    else window.addEventListener("resize", () => { this.dirty = true; });
    this.$("plot").addEventListener("keydown", (e) => this.key(e));
    this.$("plot").addEventListener("focus", () => {
      if (this.explore === null && this.store.next) this.move(this.player.shown ?? this.store.next - 1, 0, false);
    });
    this.$("notify").onclick = () => this.toggleAlerts();
  }

  // ---- the keyboard and screen readers ----

  key(e) {
    const N = this.store.next, V = this.store.names.length;
    if (!N) return;
    const at = this.explore ?? { row: this.player.shown ?? N - 1, voice: 0 };
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], PageUp: [10, 0], PageDown: [-10, 0],
                    ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (e.key === " " || e.key === "Spacebar") {
      e.preventDefault();
      this.togglePlay();
      this.announce(this.player.playing ? `playing from step ${this.store.step(this.player.cursor) ?? ""}` : "paused");
      return;
    }
    let row = at.row, voice = at.voice;
    if (e.key === "Home") row = 0;
    else if (e.key === "End") row = N - 1;
    else if (moves[e.key]) { row += moves[e.key][0]; voice += moves[e.key][1]; }
    else return;
    e.preventDefault();
    this.move(Math.max(0, Math.min(N - 1, row)), Math.max(0, Math.min(V - 1, voice)),
      true, moves[e.key] && moves[e.key][1] !== 0);
  }

  // Put the exploring cursor on (row, voice), play that step (or only that voice's tone, when
  // the voice changed) and say what is there.
  move(row, voice, play, voiceOnly = false) {
    const p = this.player;
    this.explore = { row, voice };
    if (p.playing) this.togglePlay();
    p.live = false; p.cursor = row; p.shown = row;
    this.lastCursor = null;
    if (play) this.playStep(row, voiceOnly ? voice : -1);
    this.announce(this.describeRow(row, voice));
    this.showStatus();
  }

  describeRow(row, voice) {
    const { b, j } = this.store.find(row);
    const name = this.store.names[voice] ?? `voice ${voice + 1}`;
    let text = `step ${b.steps[j]}, ${name} `;
    if (voice >= b.V) return text + "not yet a voice";
    const x = b.norms[j * b.V + voice], bits = b.bits[j * b.V + voice];
    if (bits & G.MISSING_BIT) text += "no gradient";
    else if (!Number.isFinite(x)) text += `${x}, alarm: NaN/Inf gradient`;
    else text += fmtNorm(x);
    if (bits & G.SPIKE_BIT) text += ", spike";
    if (bits & G.COLLAPSE_BIT) text += ", collapse";
    if (b.skipped[j]) text += ", step skipped by the optimizer (alarm)";
    else if (isAlarm(b, j) && Number.isFinite(x)) text += ", alarm on another voice";
    return text;
  }

  announce(text) { this.$("announce").textContent = text; }

  ensureAudio() {
    const p = this.player;
    if (!p.ctx) {
      try { p.ctx = new AudioContext({ sampleRate: this.synth.rate }); }
      catch (e) { p.ctx = new AudioContext(); }  // the browser resamples
    }
    p.ctx.resume();
    return p.ctx;
  }

  playStep(row, voice) {  // one step now, or one voice's tone of it (voice >= 0)
    const p = this.player;
    this.ensureAudio();
    this.cancel();
    const solo = this.solo;
    if (voice >= 0) this.solo = voice;
    try { this.schedule(row, row + 1); } finally { this.solo = solo; }
  }

  // ---- alarm alerts ----

  async toggleAlerts() {
    this.alerts = !this.alerts;
    this.$("notify").setAttribute("aria-pressed", String(this.alerts));
    if (this.alerts) {
      this.ensureAudio();  // a click: the browser lets this page make sound from now on
      if ("Notification" in window && Notification.permission === "default") {
        try { await Notification.requestPermission(); } catch (e) { /* refused: the sound stays */ }
      }
    }
    this.announce(this.alerts ? "alarm alerts on" : "alarm alerts off");
  }

  // New rows with an alarm: a notification while the tab is hidden, and a sound unless the run
  // is playing anyway (one alert per stretch of alarm steps).
  alertOn(b) {
    for (let j = 0; j < b.n; j++) {
      const alarm = isAlarm(b, j);
      if (alarm && !this.inAlarm) {
        const step = b.steps[j], voices = [];
        for (let v = 0; v < b.V; v++) {
          if (!(b.bits[j * b.V + v] & G.MISSING_BIT) && !Number.isFinite(b.norms[j * b.V + v])) voices.push(this.store.names[v]);
        }
        const body = `step ${step}: ` + (b.skipped[j] ? "skipped by the optimizer" : `NaN/Inf gradient in ${voices.join(", ")}`);
        this.alertsSent = (this.alertsSent || 0) + 1;
        if (document.hidden && "Notification" in window && Notification.permission === "granted") {
          try { new Notification(`gradsonic: alarm in ${this.meta.id}`, { body, tag: `gradsonic-${this.meta.id}` }); }
          catch (e) { /* some browsers only notify from a service worker */ }
        }
        if (!this.player.playing) this.cue();
        this.announce(`alarm: ${body}`);
      }
      this.inAlarm = alarm;
    }
  }

  cue() {  // the alarm's noise burst, three times, louder than any tone
    const ctx = this.ensureAudio(), s = this.synth, alarm = s.alarm, gap = alarm.length;
    const buf = ctx.createBuffer(1, 6 * gap, s.rate), data = buf.getChannelData(0);
    for (let k = 0; k < 3; k++) for (let i = 0; i < gap; i++) data[2 * k * gap + i] = Math.max(-1, Math.min(1, 3 * alarm[i]));
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.connect(ctx.destination);
    src.start();
    this.cues = (this.cues || 0) + 1;
  }

  // The start of the next stretch of steps matching `test` (a NaN run is one alarm, not one per
  // step), among the sounded steps; from the start again after the last.
  jump(test) {
    const every = this.meta.synth.every, store = this.store;
    const heard = (b, j) => isSounded(b, j, every) && test(b, j);
    const at = this.player.live ? -1 : (this.player.shown ?? this.player.cursor);
    let from = at + 1;
    if (at >= 0 && at < store.next) {
      const { b, j } = store.find(at);
      if (test(b, j)) {  // inside a stretch: go past its end first
        from = store.nextMatch(at + 1, (bb, jj) => !test(bb, jj));
        if (from === null) from = store.next;
      }
    }
    const row = store.nextMatch(from, heard) ?? store.nextMatch(0, heard);
    if (row === null) { this.$("status").textContent = "none found"; return; }
    this.seek(row, true);
  }

  seek(row, play = false) {
    const p = this.player;
    p.live = false;
    p.cursor = row;
    p.shown = row;
    this.cancel();
    if (play && !p.playing) this.togglePlay();  // like clicking a media player's timeline
    this.showStatus();
    this.lastCursor = null;
    this.dirty = true;
  }

  togglePlay() {
    const p = this.player;
    this.ensureAudio();
    p.playing = !p.playing;
    if (p.playing) { p.ctx.resume(); if (p.live) p.cursor = Math.max(0, this.store.next - 1); }
    else this.cancel();
    this.showStatus();
  }

  cancel() {  // stop what is scheduled
    const p = this.player;
    for (const s of p.sources) { try { s.stop(); } catch (e) { /* not started */ } }
    p.sources = [];
    p.chunks = [];
    p.end = p.ctx ? p.ctx.currentTime : 0;
  }

  // Samples of rows lo..hi-1 (the sounded ones: every Nth step and each alarm), one array per channel,
  // and where each row starts.
  render(lo, hi) {
    const s = this.synth, every = this.meta.synth.every, rows = [];
    let length = 0;
    for (let i = lo; i < hi; i++) {
      const { b, j } = this.store.find(i);
      if (!isSounded(b, j, every)) continue;
      rows.push([i, b, j, length]);
      length += s.stepSamples(b.V);
    }
    const chans = [];
    for (let c = 0; c < s.channels; c++) chans.push(new Float32Array(length));
    const silent = this.muted.map((m, v) => m || (this.solo >= 0 && v !== this.solo));
    let prev = null;  // the ambient layout glides from the sounded step before (as the live run)
    if (s.amb) {
      for (let i = lo - 1; i >= 0; i--) {
        const { b, j } = this.store.find(i);
        if (isSounded(b, j, every)) { prev = this.planned(b, j); break; }
      }
    }
    for (const [, b, j, at] of rows) {
      const step = this.planned(b, j), bits = b.bits.subarray(j * b.V, (j + 1) * b.V);
      s.renderStep(step.freqs, step.kinds, bits, b.V, chans, at, silent, prev);
      prev = step;
    }
    return { chans, length, rows };
  }

  planned(b, j) {  // plan_tones of one row: {freqs, kinds, voices}
    const V = b.V, freqs = new Float64Array(V), kinds = new Int8Array(V);
    G.planStep(this.mapping, b.norms.subarray(j * V, (j + 1) * V),
      b.bits.subarray(j * V, (j + 1) * V), b.skipped[j], freqs, kinds);
    return { freqs, kinds, voices: V };
  }

  schedule(lo, hi) {
    const p = this.player, s = this.synth;
    const { chans, length, rows } = this.render(lo, hi);
    if (!length) return;
    const buf = p.ctx.createBuffer(s.channels, length, s.rate);
    chans.forEach((c, i) => buf.copyToChannel(c, i));
    const src = p.ctx.createBufferSource();
    src.buffer = buf;
    src.connect(p.ctx.destination);
    const at = Math.max(p.end, p.ctx.currentTime + 0.02);
    src.start(at);
    p.sources.push(src);
    src.onended = () => { p.sources = p.sources.filter((x) => x !== src); };
    p.chunks.push({ at, rows: rows.map(([i, , , off]) => [i, at + off / s.rate]) });
    if (p.chunks.length > 64) p.chunks.shift();
    p.end = at + length / s.rate;
  }

  tick() {
    const p = this.player;
    if (!p.playing || !p.ctx || !this.synth) return;
    const now = p.ctx.currentTime, next = this.store.next;
    const stepSec = this.synth.stepSamples(this.store.names.length) / this.synth.rate;
    if (!p.live) {  // history: play on from the cursor, like a file
      while (p.end < now + LOOKAHEAD && p.cursor < next) {
        const hi = Math.min(next, p.cursor + Math.max(1, Math.ceil(0.25 / stepSec)));
        this.schedule(p.cursor, hi);
        p.cursor = hi;
      }
      if (p.cursor >= next && p.end <= now) {
        if (this.writing) { p.live = true; } else { p.playing = false; }
        this.showStatus();
      }
      return;
    }
    if (p.cursor >= next) return;
    const policy = this.$("policy").value;
    if (policy === "drop") {  // the newest steps win; the ones still waiting are dropped
      const fit = Math.max(1, Math.floor(LATENCY / stepSec));
      if (next - p.cursor > fit) { p.dropped += next - p.cursor - fit; p.cursor = next - fit; }
      if (p.end - now > LATENCY) return;
      this.schedule(p.cursor, next);
      p.cursor = next;
    } else {  // sample: whole steps; one that arrives while the buffer is full is skipped
      for (; p.cursor < next; p.cursor++) {
        if (p.end - p.ctx.currentTime >= LATENCY) { p.dropped++; continue; }
        this.schedule(p.cursor, p.cursor + 1);
      }
    }
    this.showStatus();
  }

  playingRow() {
    const p = this.player;
    if (!p.ctx || !p.playing) return p.shown ?? null;
    const now = p.ctx.currentTime;
    let row = null;
    for (const c of p.chunks) for (const [i, t] of c.rows) if (t <= now) row = i;
    if (row !== null) p.shown = row;
    return row ?? p.shown ?? null;
  }

  // ---- drawing ----

  // Per pixel column: min/max log10 norm of each voice, alarm/accent flags, and the column's last
  // step as heard (the pitch strip). One pass over the rows.
  columns(W) {
    const store = this.store, N = store.next, V = store.names.length;
    const cols = Math.min(W, N), out = [];
    this.counts = { alarms: 0, accents: 0, firstAlarm: null, firstAccent: null, lo: Infinity, hi: -Infinity };
    const counts = this.counts;
    for (let c = 0; c < cols; c++) {
      const r0 = Math.floor(c * N / cols), r1 = Math.max(r0 + 1, Math.floor((c + 1) * N / cols));
      const col = { r0, r1, alarm: false, accent: false, mn: new Float64Array(V).fill(Infinity),
                    mx: new Float64Array(V).fill(-Infinity) };
      let last = null;
      for (let i = r0; i < r1; i++) {
        const { b, j } = store.find(i);
        last = [b, j];
        if (isAlarm(b, j)) {
          col.alarm = true; counts.alarms++;
          if (counts.firstAlarm === null) counts.firstAlarm = b.steps[j];
        }
        if (isAccent(b, j)) {
          col.accent = true; counts.accents++;
          if (counts.firstAccent === null) counts.firstAccent = b.steps[j];
        }
        for (let v = 0; v < b.V; v++) {
          const x = b.norms[j * b.V + v];
          if (x > 0 && Number.isFinite(x)) {
            const l = Math.log10(x);
            if (l < col.mn[v]) col.mn[v] = l;
            if (l > col.mx[v]) col.mx[v] = l;
            if (x < counts.lo) counts.lo = x;
            if (x > counts.hi) counts.hi = x;
          }
        }
      }
      const [b, j] = last;
      col.V = b.V;
      col.freqs = new Float64Array(b.V);
      col.kinds = new Int8Array(b.V);
      G.planStep(this.mapping, b.norms.subarray(j * b.V, (j + 1) * b.V),
        b.bits.subarray(j * b.V, (j + 1) * b.V), b.skipped[j], col.freqs, col.kinds);
      out.push(col);
    }
    return out;
  }

  draw() {
    const store = this.store, N = store.next, V = store.names.length;
    const stripCss = `${Math.max(80, 14 * V)}px`;  // room to label every row
    if (this.$("strip").style.height !== stripCss) this.$("strip").style.height = stripCss;
    const plot = fit(this.$("plot")), strip = fit(this.$("strip"));
    const ctx = plot.getContext("2d", { willReadFrequently: true });
    const sctx = strip.getContext("2d", { willReadFrequently: true });
    const W = plot.width, H = plot.height, pad = 6, dpr = window.devicePixelRatio || 1;
    ctx.fillStyle = "#111"; ctx.fillRect(0, 0, W, H);
    sctx.fillStyle = "#111"; sctx.fillRect(0, 0, strip.width, strip.height);
    if (!N) return;
    const cols = this.columns(W);
    this.cols = cols;
    // The y range: most columns' extremes (2nd..98th percentile), so one explosion to 1e29 does
    // not flatten the rest of the run; what lies beyond is drawn at the edge.
    const lows = [], highs = [];
    for (const col of cols) for (let v = 0; v < V; v++) {
      if (col.mn[v] !== Infinity) { lows.push(col.mn[v]); highs.push(col.mx[v]); }
    }
    lows.sort((a, b) => a - b); highs.sort((a, b) => a - b);
    let lo = lows.length ? lows[Math.floor(0.02 * (lows.length - 1))] : -1;
    let hi = highs.length ? highs[Math.ceil(0.98 * (highs.length - 1))] : 1;
    if (hi - lo < 0.5) { lo -= 0.25; hi += 0.25; }
    const margin = 0.05 * (hi - lo);
    lo -= margin; hi += margin;
    const y = (l) => pad + (H - 2 * pad) * (1 - (Math.min(Math.max(l, lo), hi) - lo) / (hi - lo));
    const font = Math.round(11 * dpr);
    ctx.font = `${font}px sans-serif`;
    for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) {  // a line per decade (labels on top, below)
      ctx.fillStyle = "#2a2a2a"; ctx.fillRect(0, Math.round(y(d)), W, 1);
    }
    const colW = W / cols.length, rowH = strip.height / Math.max(V, 1);
    const prev = new Array(V).fill(null), ends = new Array(V).fill(null);
    const heard = [];
    const edges = [];  // [x, top?, voice] of values beyond the plotted range
    cols.forEach((col, c) => {
      const x0 = c * colW, w = Math.max(colW, 1);
      if (col.alarm) { ctx.fillStyle = "rgba(255,40,40,0.45)"; ctx.fillRect(x0, 0, w, H); }
      for (let v = 0; v < V; v++) {
        if (col.mn[v] === Infinity) { prev[v] = null; continue; }
        const y1 = y(col.mx[v]), y0 = y(col.mn[v]), mid = 0.5 * (y0 + y1);
        ctx.strokeStyle = ctx.fillStyle = voiceColor(v);
        ctx.lineWidth = Math.max(1, dpr);
        ctx.setLineDash(voiceDash(v).map((d) => d * dpr));
        ctx.fillRect(x0, y1 - 0.5, w, Math.max(1, y0 - y1 + 1));
        if (prev[v] !== null) {  // joined to the previous column: a curve, not dots
          ctx.beginPath(); ctx.moveTo(prev[v][0], prev[v][1]); ctx.lineTo(x0 + colW / 2, mid); ctx.stroke();
        }
        prev[v] = [x0 + colW / 2, mid];
        ends[v] = prev[v];
        if (col.mx[v] > hi) edges.push([x0 + colW / 2, true, v]);
        if (col.mn[v] < lo) edges.push([x0 + colW / 2, false, v]);
      }
      ctx.setLineDash([]);
      if (col.accent) { ctx.fillStyle = "#ffd23f"; ctx.fillRect(x0, 0, w, 4 * dpr); }
      for (let v = 0; v < col.V; v++) if (col.kinds[v] === G.TONE) heard.push(col.freqs[v]);
    });
    // values beyond the range: a white triangle at that edge (a run to 1e29 does not squash the rest)
    const tri = 5 * dpr;
    let lastEdge = -Infinity;
    ctx.fillStyle = "#fff";
    for (const [x, top] of edges) {
      if (Math.abs(x - lastEdge) < tri && edges.length > W / tri) continue;
      lastEdge = x;
      const yy = top ? 1 : H - 1, dir = top ? 1 : -1;
      ctx.beginPath(); ctx.moveTo(x, yy); ctx.lineTo(x - tri / 2, yy + dir * tri); ctx.lineTo(x + tri / 2, yy + dir * tri); ctx.fill();
    }
    // the decade labels, on top of the curves
    for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) {
      const text = `1e${d}`, tw = ctx.measureText(text).width;
      ctx.fillStyle = "rgba(17,17,17,0.8)"; ctx.fillRect(2, y(d) - font - 1, tw + 4, font + 2);
      ctx.fillStyle = "#bbb"; ctx.fillText(text, 4, y(d) - 2);
    }
    // each voice named at the end of its curve (names nudged apart)
    const labels = ends.map((e, v) => e && [e[1], v]).filter(Boolean).sort((a, b) => a[0] - b[0]);
    let lastY = -Infinity;
    for (const label of labels) { label[0] = Math.max(label[0], lastY + font + 2); lastY = label[0]; }
    let limit = H - 2 * font - 6;  // above the step numbers at the bottom
    for (let k = labels.length - 1; k >= 0; k--) { labels[k][0] = Math.min(labels[k][0], limit); limit = labels[k][0] - font - 2; }
    for (const [ly, v] of labels) {
      const text = store.names[v], tw = ctx.measureText(text).width;
      const x = Math.max(0, W - tw - 8), yy = Math.min(H - 4, ly + font / 2);
      ctx.fillStyle = "rgba(17,17,17,0.75)"; ctx.fillRect(x - 2, yy - font, tw + 4, font + 3);
      ctx.fillStyle = voiceColor(v); ctx.fillText(text, x, yy);
    }
    // the pitch strip: colour = pitch as heard on a perceptually uniform, colour-blind-safe scale
    // (viridis: dark purple the lowest heard, yellow the highest); white = above the mapping's
    // band, slate = below it (a vanishing gradient), red = alarm, black = silent
    const [bandLo] = this.mapping.band;
    heard.sort((a, b) => a - b);  // colours over most of what is heard (2nd..98th percentile)
    const fLo = heard.length ? heard[Math.floor(0.02 * (heard.length - 1))] : bandLo;
    const fHi = heard.length ? heard[Math.ceil(0.98 * (heard.length - 1))] : bandLo;
    const lf = Math.log(fLo), span = Math.max(Math.log(fHi) - lf, Math.log(2) / 2);
    const level = (f) => Math.min(1, Math.max(0, (Math.log(f) - lf) / span));
    cols.forEach((col, c) => {
      for (let v = 0; v < col.V; v++) {
        const k = col.kinds[v], f = col.freqs[v];
        let color = "#000";
        if (k === G.ALARM) color = "#ff2828";
        else if (k === G.OVER) color = f <= bandLo ? "#4a5170" : "#ffffff";
        else if (k === G.TONE) color = viridis(level(f));
        sctx.fillStyle = color;
        sctx.fillRect(c * colW, v * rowH, Math.max(colW, 1), Math.max(rowH - (rowH > 3 ? 1 : 0), 1));
      }
    });
    if (rowH >= 9 * dpr) {  // each row labelled with its voice
      const sf = Math.min(font, Math.floor(rowH - 2));
      sctx.font = `${sf}px sans-serif`;
      for (let v = 0; v < V; v++) {
        const text = store.names[v], tw = sctx.measureText(text).width;
        sctx.fillStyle = "rgba(17,17,17,0.75)"; sctx.fillRect(0, v * rowH, tw + 6, rowH - 1);
        sctx.fillStyle = "#ddd"; sctx.fillText(text, 3, v * rowH + rowH / 2 + sf / 3);
      }
    }
    this.$("strip").setAttribute("aria-label", `pitch strip, one row per voice: ${store.names.join(", ")}`);
    this.summarise();
    ctx.fillStyle = "#aaa";
    const first = `step ${store.step(0)}`, last = `step ${store.step(N - 1)}`;
    ctx.fillText(first, 4, H - 4);
    ctx.fillText(last, W - ctx.measureText(last).width - 4, H - 4);
    this.cursorCache = { plot: ctx.getImageData(0, 0, W, H), strip: sctx.getImageData(0, 0, strip.width, strip.height) };
    this.lastCursor = null;
  }

  // The run in words, for screen readers and anyone: voices, range, alarms, accents, latest.
  summarise() {
    const store = this.store, N = store.next, c = this.counts;
    if (!N || !c) return;
    const { b, j } = store.find(N - 1);
    const latest = store.names.slice(0, b.V).map((name, v) => {
      const x = b.norms[j * b.V + v];
      return `${name} ${b.bits[j * b.V + v] & G.MISSING_BIT ? "no gradient" : fmtNorm(x)}`;
    });
    this.$("summary").textContent = [
      `${store.names.length} voices: ${store.names.join(", ")}.`,
      `${N} steps (${store.step(0)} to ${store.step(N - 1)}), ${this.writing ? "training now" : "finished"}.`,
      Number.isFinite(c.lo) ? `Norms from ${fmtNorm(c.lo)} to ${fmtNorm(c.hi)}.` : "No finite norm yet.",
      c.alarms ? `${plural(c.alarms, "step")} with a NaN/Inf alarm, the first at step ${c.firstAlarm}.` : "No NaN/Inf alarm.",
      c.accents ? `${plural(c.accents, "step")} with a spike or collapse, the first at step ${c.firstAccent}.` : "No spike or collapse.",
      `Latest, step ${b.steps[j]}: ${latest.join(", ")}.`,
    ].join("\n");
  }

  // What is under the mouse: the step, and on the strip the voice and its norm.
  hover(e, onStrip) {
    const rect = e.target.getBoundingClientRect(), N = this.store.next;
    if (!N) return;
    const row = Math.max(0, Math.min(N - 1, Math.floor((e.clientX - rect.left) / rect.width * N)));
    const { b, j } = this.store.find(row);
    let text = `step ${b.steps[j]}`;
    if (onStrip) {
      const v = Math.floor((e.clientY - rect.top) / rect.height * this.store.names.length);
      if (v >= 0 && v < b.V) {
        const x = b.norms[j * b.V + v], bits = b.bits[j * b.V + v];
        text += `, ${this.store.names[v]}: ` + (bits & G.MISSING_BIT ? "no gradient" : `norm ${fmtNorm(x)}`)
          + (bits & G.SPIKE_BIT ? " (spike)" : "") + (bits & G.COLLAPSE_BIT ? " (collapse)" : "");
      }
    }
    if (b.skipped[j]) text += " - skipped by the optimizer";
    this.$("hover").textContent = text;
  }

  drawCursor() {
    let row = this.playingRow();
    if (this.player.live && !this.player.playing && this.store.next) row = this.store.next - 1;
    if (row === null || !this.cursorCache || row === this.lastCursor) return;
    this.lastCursor = row;
    const N = this.store.next;
    for (const [id, img] of [["plot", this.cursorCache.plot], ["strip", this.cursorCache.strip]]) {
      const cv = this.$(id), ctx = cv.getContext("2d", { willReadFrequently: true });
      if (img.width !== cv.width) { this.dirty = true; return; }
      ctx.putImageData(img, 0, 0);
      const x = Math.round((row + 0.5) / N * cv.width);
      ctx.fillStyle = "#fff";
      ctx.fillRect(x, 0, 2, cv.height);
    }
    const step = this.store.step(row);
    this.$("cursor").textContent = step === null ? "" : `${this.player.playing ? "playing" : "at"} step ${step}`;
  }

  // For tests and tools: the samples of rows lo..hi-1 rendered through an OfflineAudioContext.
  async renderOffline(lo, hi) {
    const s = this.synth;
    const { chans, length } = this.render(lo, hi);
    const ctx = new OfflineAudioContext(s.channels, length, s.rate);
    const buf = ctx.createBuffer(s.channels, length, s.rate);
    chans.forEach((c, i) => buf.copyToChannel(c, i));
    const src = ctx.createBufferSource();
    src.buffer = buf;
    src.connect(ctx.destination);
    src.start(0);
    const out = await ctx.startRendering();
    const res = [];
    for (let c = 0; c < s.channels; c++) res.push(Array.from(out.getChannelData(c)));
    return res;
  }
}
// Voices: the Okabe-Ito palette (distinct for every kind of colour vision; black made light
// grey for the dark page), solid for the first 8 voices and dashed for the next 8 - and each
// curve is named at its end, so colour is never the only cue.
const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#BBBBBB"];
function voiceColor(v) { return PALETTE[v % PALETTE.length]; }
function voiceDash(v) { return Math.floor(v / PALETTE.length) % 2 ? [6, 3] : []; }

// viridis, 9 stops (perceptually uniform, colour-blind safe), interpolated
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                 [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  return canvas;
}

// The markup of a run's view, ids prefixed with `p` (the page: none; each widget: its own).
function runMarkup(p, heading = "h1") {
  return `<${heading} id="${p}run-name" class="run-title"></${heading}>
  <div class="bar" id="${p}controls" role="toolbar" aria-label="playback">
    <button id="${p}play" data-testid="play" aria-keyshortcuts="Space">Play</button>
    <button id="${p}live" data-testid="live" aria-pressed="false" title="follow the newest steps">Live</button>
    <button id="${p}next-alarm" title="jump to the next NaN/Inf step">Next alarm</button>
    <button id="${p}next-accent" title="jump to the next spike or collapse">Next accent</button>
    <label>when behind <select id="${p}policy" title="what live play does when training outruns the sound">
      <option value="drop">drop (newest wins)</option><option value="sample">sample (whole steps)</option>
    </select></label>
    <button id="${p}notify" data-testid="notify" aria-pressed="false"
      title="a notification and a sound for every NaN/Inf alarm, also while this tab is hidden or paused">Alarm alerts</button>
    <span class="latest">latest step <span id="${p}latest-step" class="latest-step" data-testid="latest-step">-</span></span>
    <span id="${p}connection" role="status"></span>
  </div>
  <p id="${p}settings" class="muted"></p>
  <details id="${p}voices-box" class="voices-box" open><summary>Voices: mute (M) or hear alone (S)</summary>
    <ul id="${p}voices" class="voices" aria-label="voices"></ul></details>
  <canvas id="${p}plot" class="plot" data-testid="explore" tabindex="0" role="application"
    aria-roledescription="norm plot" aria-describedby="${p}keys ${p}summary"
    aria-label="gradient norm per voice, one column per step"></canvas>
  <canvas id="${p}strip" class="strip" role="img" aria-label="pitch strip: the pitch each voice plays at each step"></canvas>
  <p id="${p}keys" class="muted keys">In the plot: Left/Right one step, Page Up/Down ten, Home/End
    first/last step, Up/Down the voice; each move plays it. Space plays or pauses.</p>
  <div class="bar muted"><span id="${p}cursor"></span> <span id="${p}status" role="status"></span> <span id="${p}hover" class="hover"></span></div>
  <div class="legend muted">
    <span><i class="sw-accent"></i>accent (spike or collapse)</span>
    <span><i class="sw-alarm"></i>NaN/Inf alarm</span>
    <span><i class="sw-edge"></i>beyond the plotted range</span>
    <span>pitch strip: <i class="sw-low"></i>low to <i class="sw-high"></i>high,
      <i class="sw-above"></i>above the band, <i class="sw-below"></i>below it (vanishing),
      <i class="sw-silent"></i>silent</span>
  </div>
  <${heading === "h1" ? "h2" : "div"} class="visually-hidden">Summary</${heading === "h1" ? "h2" : "div"}>
  <p id="${p}summary" data-testid="summary" class="summary"></p>
  <div id="${p}announce" data-testid="announce" class="visually-hidden" aria-live="polite" aria-atomic="true"></div>`;
}

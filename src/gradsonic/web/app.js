// The gradsonic serve page: a list of runs; for one run, its norm curves and pitch strip, drawn
// and played (WebAudio, synth.js) from the norms the server streams (server-sent events).
"use strict";
const G = window.GradsonicSynth;
const params = new URLSearchParams(location.search);
const TOKEN = params.get("token");
const LATENCY = 0.2;     // live: at most this much sound waits to be played (seconds)
const LOOKAHEAD = 0.5;   // history: sound scheduled ahead of the playhead (seconds)
const $ = (id) => document.getElementById(id);

function api(path, extra) {
  const q = new URLSearchParams(extra || {});
  if (TOKEN) q.set("token", TOKEN);
  return `api/${path}?${q}`;
}

function fmtNorm(x) { return Number.isFinite(x) ? x.toPrecision(3) : String(x); }

// ---- the run list -------------------------------------------------------------------------

async function showRuns() {
  $("runs-view").hidden = false;
  const list = $("runs");
  async function refresh() {
    let data;
    try {
      const r = await fetch(api("runs"));
      data = await r.json();
      if (!r.ok) throw new Error(data.error || r.statusText);
    } catch (e) { $("runs-status").textContent = `server unreachable (${e.message}); retrying`; return; }
    $("runs-status").textContent = data.runs.length ? `${data.runs.length} run(s) under ${data.root}`
      : `no runs under ${data.root} yet: they appear here when a job starts writing one`;
    $("problems").replaceChildren(...data.problems.map((p) => {
      const li = document.createElement("li");
      li.textContent = `${p.id}: cannot be read (${p.error})`;
      return li;
    }));
    list.replaceChildren(...data.runs.map((run) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.dataset.testid = "run";
      const q = new URLSearchParams({ run: run.id });
      if (TOKEN) q.set("token", TOKEN);
      a.href = `?${q}`;
      a.textContent = run.name;
      const info = document.createElement("span");
      info.className = "info";
      info.textContent = ` ${run.rows} steps` + (run.latest_step !== null ? ` (latest ${run.latest_step})` : "")
        + `, ${run.voices} voices, ` + (run.writing ? "training now" : "finished")
        + `, ${new Date(run.modified * 1000).toLocaleString()}`;
      if (run.writing) li.classList.add("writing");
      li.append(a, info);
      return li;
    }));
  }
  await refresh();
  setInterval(refresh, 2000);
}

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
  constructor(runId) {
    this.runId = runId;
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
  }

  async start() {
    const r = await fetch(api("run", { run: this.runId }));
    const meta = await r.json();
    if (!r.ok) {
      $("controls").hidden = true;
      $("status").textContent = `${meta.error} - back to the list of runs: ${location.origin}/`;
      return;
    }
    this.meta = meta;
    this.synth = new G.Synth(meta.synth);
    this.mapping = G.makeMapping(meta.mapping);
    this.writing = meta.writing;
    this.player.live = meta.writing;  // a finished run plays from its start, like a file
    this.setVoices(meta.layer_names);
    $("run-name").textContent = meta.id;
    $("settings").textContent = `mapping ${meta.mapping.kind}, layout ${meta.synth.layout}, ` +
      `${meta.synth.sample_rate} Hz, tone ${(meta.settings.tone_duration * 1000).toFixed(1)} ms` +
      (meta.synth.every > 1 ? `, every ${meta.synth.every} steps` : "") +
      (meta.mapping_note ? ` - ${meta.mapping_note}` : "");
    this.connect();
    this.bind();
    // Redraw when rows arrive, but a long run (each redraw reads every row) at most every
    // 50 ms + 1 ms per 500 rows (2 s at 1M rows), so following it live costs little CPU.
    let drawn = 0;
    const draw = (now) => {
      if (this.dirty && now - drawn >= Math.min(2000, 50 + this.store.next / 500)) {
        this.dirty = false;
        drawn = now;
        this.draw();
      }
      this.drawCursor();
      requestAnimationFrame(draw);
    };
    requestAnimationFrame(draw);
    setInterval(() => this.tick(), 50);
  }

  connect() {
    if (this.es) this.es.close();
    const es = this.es = new EventSource(api("stream", { run: this.runId, from: this.store.next }));
    es.addEventListener("voices", (e) => this.setVoices(JSON.parse(e.data).layer_names));
    es.addEventListener("rows", (e) => this.receive(decodeBatch(JSON.parse(e.data))));
    es.addEventListener("state", (e) => {
      const s = JSON.parse(e.data);
      this.writing = s.writing;
      this.serverDropped = s.dropped;
      this.showStatus();
    });
    es.addEventListener("reset", () => { es.close(); location.reload(); });
    es.addEventListener("bye", () => {  // (the browser keeps reconnecting, quietly)
      this.bye = true;
      this.writing = false;
      $("connection").textContent = "server stopped: everything received is here and still plays";
      this.showStatus();
    });
    es.onerror = () => { if (!this.bye) $("connection").textContent = "reconnecting..."; };
    es.onopen = () => { this.bye = false; $("connection").textContent = "connected"; };
  }

  setVoices(names) {
    this.store.names = names;
    while (this.muted.length < names.length) this.muted.push(false);
    const box = $("voices");
    box.replaceChildren(...names.map((name, v) => {
      const div = document.createElement("div");
      div.className = "voice";
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = voiceColor(v);
      const label = document.createElement("span");
      label.dataset.testid = "voice";
      label.textContent = name;
      const mute = document.createElement("button");
      mute.textContent = "M"; mute.title = "mute this voice";
      mute.className = this.muted[v] ? "on" : "";
      mute.onclick = () => { this.muted[v] = !this.muted[v]; this.setVoices(this.store.names); };
      const solo = document.createElement("button");
      solo.textContent = "S"; solo.title = "hear this voice alone";
      solo.className = this.solo === v ? "on" : "";
      solo.onclick = () => { this.solo = this.solo === v ? -1 : v; this.setVoices(this.store.names); };
      div.append(sw, label, mute, solo);
      return div;
    }));
    this.dirty = true;
  }

  receive(b) {
    this.pending.push(b);
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
          const r = await fetch(api("rows", { run: this.runId, from: this.store.next, to: b.first }));
          const data = await r.json();
          for (const raw of data.batches) {
            const got = decodeBatch(raw);
            if (got.first === this.store.next) this.store.add(got);
          }
        } catch (e) { /* try again with the next batch */ }
        this.filling = false;
        if (b.first > this.store.next) return;
        continue;
      }
      this.pending.shift();
      this.store.add(b);
      this.arrivals.push([b.first, b.first + b.n - 1, Date.now()]);
      if (this.arrivals.length > 10000) this.arrivals.splice(0, 5000);
      $("latest-step").textContent = String(b.steps[b.n - 1]);
      this.dirty = true;
    }
    this.showStatus();
  }

  showStatus() {
    const p = this.player;
    $("status").textContent = `${this.store.next} steps received` +
      (this.writing ? ", training now" : ", finished") +
      (this.serverDropped ? `, ${this.serverDropped} re-fetched after a slow link` : "") +
      (p.dropped ? `, ${p.dropped} steps not played (${$("policy").value})` : "");
    $("live").classList.toggle("on", p.live);
    $("play").textContent = p.playing ? "Pause" : "Play";
  }

  bind() {
    $("play").onclick = () => this.togglePlay();
    $("live").onclick = () => { const p = this.player; p.live = true; p.cursor = this.store.next; this.cancel(); this.showStatus(); };
    $("next-alarm").onclick = () => this.jump(isAlarm);
    $("next-accent").onclick = () => this.jump(isAccent);
    for (const id of ["plot", "strip"]) {
      $(id).onclick = (e) => {
        const rect = e.target.getBoundingClientRect();
        const row = Math.floor((e.clientX - rect.left) / rect.width * this.store.next);
        this.seek(Math.max(0, Math.min(row, this.store.next - 1)), true);
      };
      $(id).onmousemove = (e) => this.hover(e, id === "strip");
    }
    window.addEventListener("resize", () => { this.dirty = true; });
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
    if (row === null) { $("status").textContent = "none found"; return; }
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
    if (!p.ctx) {
      try { p.ctx = new AudioContext({ sampleRate: this.synth.rate }); }
      catch (e) { p.ctx = new AudioContext(); }  // the browser resamples
    }
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
    for (const [, b, j, at] of rows) {
      const V = b.V, freqs = new Float64Array(V), kinds = new Int8Array(V);
      const norms = b.norms.subarray(j * V, (j + 1) * V), bits = b.bits.subarray(j * V, (j + 1) * V);
      G.planStep(this.mapping, norms, bits, b.skipped[j], freqs, kinds);
      s.renderStep(freqs, kinds, bits, V, chans, at, silent);
    }
    return { chans, length, rows };
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
    const policy = $("policy").value;
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
    for (let c = 0; c < cols; c++) {
      const r0 = Math.floor(c * N / cols), r1 = Math.max(r0 + 1, Math.floor((c + 1) * N / cols));
      const col = { r0, r1, alarm: false, accent: false, mn: new Float64Array(V).fill(Infinity),
                    mx: new Float64Array(V).fill(-Infinity) };
      let last = null;
      for (let i = r0; i < r1; i++) {
        const { b, j } = store.find(i);
        last = [b, j];
        if (isAlarm(b, j)) col.alarm = true;
        if (isAccent(b, j)) col.accent = true;
        for (let v = 0; v < b.V; v++) {
          const x = b.norms[j * b.V + v];
          if (x > 0 && Number.isFinite(x)) {
            const l = Math.log10(x);
            if (l < col.mn[v]) col.mn[v] = l;
            if (l > col.mx[v]) col.mx[v] = l;
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
    const plot = fit($("plot")), strip = fit($("strip"));
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
    ctx.font = `${Math.round(11 * dpr)}px sans-serif`;
    for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) {  // a line per decade
      ctx.fillStyle = "#2a2a2a"; ctx.fillRect(0, Math.round(y(d)), W, 1);
      ctx.fillStyle = "#777"; ctx.fillText(`1e${d}`, 4, y(d) - 2);
    }
    const colW = W / cols.length, rowH = strip.height / Math.max(V, 1);
    const prev = new Array(V).fill(null);
    const heard = [];
    cols.forEach((col, c) => {
      const x0 = c * colW, w = Math.max(colW, 1);
      if (col.alarm) { ctx.fillStyle = "rgba(255,40,40,0.45)"; ctx.fillRect(x0, 0, w, H); }
      for (let v = 0; v < V; v++) {
        if (col.mn[v] === Infinity) { prev[v] = null; continue; }
        const y1 = y(col.mx[v]), y0 = y(col.mn[v]), mid = 0.5 * (y0 + y1);
        ctx.strokeStyle = ctx.fillStyle = voiceColor(v);
        ctx.fillRect(x0, y1 - 0.5, w, Math.max(1, y0 - y1 + 1));
        if (prev[v] !== null) {  // joined to the previous column: a curve, not dots
          ctx.beginPath(); ctx.moveTo(prev[v][0], prev[v][1]); ctx.lineTo(x0 + colW / 2, mid); ctx.stroke();
        }
        prev[v] = [x0 + colW / 2, mid];
      }
      if (col.accent) { ctx.fillStyle = "#ffd23f"; ctx.fillRect(x0, 0, w, 4 * dpr); }
      for (let v = 0; v < col.V; v++) if (col.kinds[v] === G.TONE) heard.push(col.freqs[v]);
    });
    // the pitch strip: colour = pitch as heard, blue (the lowest heard) to red (the highest);
    // white = above the mapping's band, slate = below it (a vanishing gradient), red = alarm
    const [bandLo] = this.mapping.band;
    heard.sort((a, b) => a - b);  // colours over most of what is heard (2nd..98th percentile)
    const fLo = heard.length ? heard[Math.floor(0.02 * (heard.length - 1))] : bandLo;
    const fHi = heard.length ? heard[Math.ceil(0.98 * (heard.length - 1))] : bandLo;
    const lf = Math.log(fLo), span = Math.max(Math.log(fHi) - lf, Math.log(2) / 2);
    const hue = (f) => Math.round(240 - 240 * Math.min(1, Math.max(0, (Math.log(f) - lf) / span)));
    cols.forEach((col, c) => {
      for (let v = 0; v < col.V; v++) {
        const k = col.kinds[v], f = col.freqs[v];
        let color = "#000";
        if (k === G.ALARM) color = "#ff2828";
        else if (k === G.OVER) color = f <= bandLo ? "#4a5170" : "#ffffff";
        else if (k === G.TONE) color = `hsl(${hue(f)},85%,55%)`;
        sctx.fillStyle = color;
        sctx.fillRect(c * colW, v * rowH, Math.max(colW, 1), Math.max(rowH - (rowH > 3 ? 1 : 0), 1));
      }
    });
    ctx.fillStyle = "#aaa";
    const first = `step ${store.step(0)}`, last = `step ${store.step(N - 1)}`;
    ctx.fillText(first, 4, H - 4);
    ctx.fillText(last, W - ctx.measureText(last).width - 4, H - 4);
    this.cursorCache = { plot: ctx.getImageData(0, 0, W, H), strip: sctx.getImageData(0, 0, strip.width, strip.height) };
    this.lastCursor = null;
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
    $("hover").textContent = text;
  }

  drawCursor() {
    const row = this.playingRow();
    if (row === null || !this.cursorCache || row === this.lastCursor) return;
    this.lastCursor = row;
    const N = this.store.next;
    for (const [id, img] of [["plot", this.cursorCache.plot], ["strip", this.cursorCache.strip]]) {
      const cv = $(id), ctx = cv.getContext("2d", { willReadFrequently: true });
      if (img.width !== cv.width) { this.dirty = true; return; }
      ctx.putImageData(img, 0, 0);
      const x = Math.round((row + 0.5) / N * cv.width);
      ctx.fillStyle = "#fff";
      ctx.fillRect(x, 0, 2, cv.height);
    }
    const step = this.store.step(row);
    $("cursor").textContent = step === null ? "" : `${this.player.playing ? "playing" : "at"} step ${step}`;
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

// Neighbouring voices get far-apart hues (the golden angle), the first and last too.
function voiceColor(v) { return `hsl(${Math.round((v * 137.508) % 360)},70%,62%)`; }

function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  return canvas;
}

// ---- start ----

const runId = params.get("run");
if (runId === null) {
  showRuns();
} else {
  $("run-view").hidden = false;
  const view = new RunView(runId);
  window.gradsonic = view;
  view.start();
}

// The gradsonic serve page: a list of runs; for one run, its view (view.js) fed by the
// server's server-sent events.
"use strict";
const params = new URLSearchParams(location.search);
const TOKEN = params.get("token");
const $ = (id) => document.getElementById(id);

function api(path, extra) {
  const q = new URLSearchParams(extra || {});
  if (TOKEN) q.set("token", TOKEN);
  return `api/${path}?${q}`;
}

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
// ---- one run, from the server ------------------------------------------------------------

// The view's source (view.js): the run's settings from /api/run, its rows as server-sent events,
// a gap (rows the server dropped for a slow link) from /api/rows.
class ServerSource {
  constructor(runId) { this.runId = runId; }

  async meta() {
    const r = await fetch(api("run", { run: this.runId }));
    const meta = await r.json();
    if (!r.ok) throw new Error(`${meta.error} - back to the list of runs: ${location.origin}/`);
    return meta;
  }

  connect(h, from) {
    if (this.es) this.es.close();
    const es = this.es = new EventSource(api("stream", { run: this.runId, from }));
    let bye = false;
    es.addEventListener("voices", (e) => h.voices(JSON.parse(e.data).layer_names));
    es.addEventListener("rows", (e) => h.rows(decodeBatch(JSON.parse(e.data))));
    es.addEventListener("state", (e) => h.state(JSON.parse(e.data)));
    es.addEventListener("reset", () => { es.close(); location.reload(); });
    es.addEventListener("bye", () => {  // (the browser keeps reconnecting, quietly)
      bye = true;
      h.bye("server stopped: everything received is here and still plays");
    });
    es.onerror = () => { if (!bye) h.connection("reconnecting..."); };
    es.onopen = () => { bye = false; h.connection("connected"); };
  }

  async rows(from, to) {
    const r = await fetch(api("rows", { run: this.runId, from, to }));
    return (await r.json()).batches.map(decodeBatch);
  }
}

// ---- start ----

const runId = params.get("run");
if (runId === null) {
  showRuns();
} else {
  const root = $("run-view");
  root.innerHTML = runMarkup("");
  root.hidden = false;
  if (window.matchMedia("(max-width: 480px)").matches) $("voices-box").open = false;  // the plot first
  const view = new RunView(root, new ServerSource(runId));
  window.gradsonic = view;
  view.start();
}

// The notebook widget (anywidget): gradsonic/widget.py puts synth.js and view.js before this file
// in one module, so this is the serve page's view (RunView) fed by the kernel's comm channel.
//
// One Feed per widget model keeps every row received, in order, for each of its views (an output
// shown twice, a view re-rendered). The kernel sends rows as binary buffers, at most ~10 messages
// a second; a message that came before this module loaded is lost, so the feed says hello with the
// row it needs and asks (want) for any gap - the kernel answers as soon as no cell is running.
const FEEDS = new WeakMap();

function fromBuffer(dv, Type) {  // a copy: the buffer's offset need not suit Type's alignment
  return new Type(dv.buffer.slice(dv.byteOffset, dv.byteOffset + dv.byteLength));
}

class Feed {
  constructor(model) {
    this.model = model;
    this.batches = [];
    this.next = 0;
    this.waiting = [];   // batches after a gap
    this.views = new Set();
    this.restarts = new Set();
    const meta = model.get("meta");
    this.names = meta.layer_names;
    this.writing = meta.writing;
    this.asked = [-1, 0];  // [row, time] of the last want
    model.on("msg:custom", (msg, buffers) => this.message(msg, buffers));
    model.send({ kind: "hello", from: 0 });
  }

  message(msg, buffers) {
    if (msg.kind === "rows") {
      msg.batches.forEach((b, k) => {
        const [steps, norms, bits, skipped] = buffers.slice(4 * k, 4 * k + 4);
        this.take({ first: b.first, n: b.n, V: b.voices, steps: fromBuffer(steps, Float64Array),
                    norms: fromBuffer(norms, Float32Array), bits: fromBuffer(bits, Uint8Array),
                    skipped: fromBuffer(skipped, Uint8Array) });
      });
    } else if (msg.kind === "voices") {
      this.names = msg.layer_names;
      for (const h of this.views) h.voices(this.names);
    } else if (msg.kind === "state") {
      this.writing = msg.writing;
      for (const h of this.views) this.tell(h);
    } else if (msg.kind === "reset") {  // the recording was cut back or replaced: start again
      this.batches = []; this.next = 0; this.waiting = [];
      for (const restart of this.restarts) restart();
    }
  }

  take(b) {
    this.waiting.push(b);
    this.waiting.sort((x, y) => x.first - y.first);
    while (this.waiting.length) {
      let w = this.waiting[0];
      if (w.first + w.n <= this.next) { this.waiting.shift(); continue; }
      if (w.first > this.next) { this.ask(this.next, w.first); return; }
      if (w.first < this.next) w = sliceBatch(w, this.next);
      this.waiting.shift();
      this.batches.push(w);
      this.next = w.first + w.n;
      for (const h of this.views) h.rows(w);
    }
  }

  ask(from, to) {  // at most once a second for the same row
    const now = Date.now();
    if (this.asked[0] === from && now - this.asked[1] < 1000) return;
    this.asked = [from, now];
    this.model.send({ kind: "want", from, to });
  }

  tell(h) {
    h.state({ writing: this.writing, dropped: 0 });
    h.connection(this.writing ? "following the kernel" : "the run is finished: everything received stays here and plays");
  }
}

// A view's source (view.js): the model's feed.
class CommSource {
  constructor(feed) { this.feed = feed; }

  async meta() {
    return { ...this.feed.model.get("meta"), layer_names: this.feed.names, writing: this.feed.writing };
  }

  connect(h, from) {
    this.feed.views.add(h);
    for (const b of this.feed.batches) if (b.first + b.n > from) h.rows(b.first < from ? sliceBatch(b, from) : b);
    this.feed.tell(h);
  }

  async rows() { return []; }  // the feed asks the kernel for gaps itself

  close(h) { this.feed.views.delete(h); }
}

function initialize({ model }) {
  FEEDS.set(model, new Feed(model));
}

function render({ model, el }) {
  if (!FEEDS.has(model)) FEEDS.set(model, new Feed(model));
  const feed = FEEDS.get(model);
  const p = `gs-${Math.random().toString(36).slice(2, 10)}-`;
  const root = document.createElement("section");
  root.className = "gs-run gs-widget";
  root.setAttribute("aria-labelledby", `${p}run-name`);
  el.append(root);
  let view = null;
  const start = () => {
    if (view) view.stop();
    root.innerHTML = runMarkup(p, "h3");
    view = new RunView(root, new CommSource(feed), p);
    root.gradsonicView = view;  // for tests and tools, like the page's window.gradsonic
    view.start();
  };
  feed.restarts.add(start);
  start();
  return () => { feed.restarts.delete(start); view.stop(); };
}

export default { initialize, render };

"""The notebook widget's cost: kernel messages per second while training, and the browser's frame
time following a 100k-step run (a real JupyterLab and Chromium).

    python benchmarks/widget.py                 # both; ~2 minutes
    python benchmarks/widget.py --kernel-only   # messages only (no browser)

Kernel: a 4-layer MLP trains as fast as it can with ``son.widget()`` shown (the messages the
widget sends are counted where they leave it); per round: steps/s, messages/s, rows and bytes per
message. Browser: ``gradsonic.notebook.show()`` of a recording holding 100,000 steps x 4 voices
while another process appends 1,000 steps/s, the widget on Live; for 10 s every animation frame's
interval is recorded (requestAnimationFrame) and every redraw of the view is timed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

WRITER = """
import sys, time
import numpy as np
from gradsonic.recording import RecordSink
from gradsonic.settings import SoundSettings
from gradsonic.sinks.base import StepBlock

path, first, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
names = ("embed", "block1", "block2", "head")
sink = RecordSink(path, names, SoundSettings.from_options().as_dict())
sink.open(44100)
rng = np.random.default_rng(0)
step = 0
def write(n):
    global step
    norms = rng.lognormal(-1, 0.5, (n, len(names))).astype(np.float32)
    sink.write_steps(None, StepBlock(step, n, 0, 0, np.zeros(n), norms, np.zeros(norms.shape, bool),
                                     np.zeros(n, bool), layer_names=names))
    step += n
write(first)
print("ready", flush=True)
t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    time.sleep(0.05)
    write(rate // 20)
sink.close()
"""


def kernel(rounds: int, steps: int) -> None:
    from gradsonic import GradientSonifier
    from gradsonic.widget import RunWidget

    lock = threading.Lock()
    sent: list[tuple[float, str, int, int]] = []

    def send(self, content, buffers=None):  # counted where the widget hands it to the comm
        n = sum(b["n"] for b in content.get("batches", []))
        with lock:
            sent.append((time.monotonic(), content["kind"], n,
                         sum(memoryview(b).nbytes for b in buffers or [])))

    RunWidget.send = send
    print("| round | steps/s | messages/s | rows per message (median, max) | bytes per message (max) |")
    print("| --- | --- | --- | --- | --- |")
    for r in range(rounds):
        sent.clear()
        model = torch.nn.Sequential(*[m for _ in range(4) for m in (torch.nn.Linear(64, 64),
                                                                     torch.nn.ReLU())])
        with tempfile.TemporaryDirectory() as tmp:
            son = GradientSonifier(model, run_dir=Path(tmp) / "run", quiet=True)
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
            w = son.widget()
            w._browser(w, {"kind": "hello", "from": 0}, [])
            x = torch.randn(32, 64)
            t0 = time.monotonic()
            for _ in range(steps):
                opt.zero_grad()
                model(x).pow(2).mean().backward()
                opt.step()
            son.close()
            elapsed = time.monotonic() - t0
            time.sleep(0.5)
            w.close()
        rows = [m for m in sent if m[1] == "rows"]
        per = [m[2] for m in rows]
        print(f"| {r + 1} | {steps / elapsed:.0f} | {len(rows) / elapsed:.1f} | "
              f"{statistics.median(per):.0f}, {max(per)} | {max(m[3] for m in rows)} |")


def browser(seconds: float) -> None:
    from fixtures.browser import CHROMIUM
    from fixtures.jupyter import KERNEL_IDLE, TOKEN, jupyter_app, run_next_cell, write_notebook
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root / "long.gsr"), "100000",
                                   "1000", str(seconds + 60)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().startswith("ready")
        write_notebook(root / "long.ipynb", ["import gradsonic.notebook\n"
                                             "gradsonic.notebook.show('long.gsr')"])
        try:
            with jupyter_app("lab", root) as base, sync_playwright() as p:
                b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = b.new_page(viewport={"width": 1200, "height": 900})
                page.goto(f"{base}lab/tree/long.ipynb?token={TOKEN}")
                page.wait_for_function(KERNEL_IDLE, timeout=120_000)
                run_next_cell(page)
                view = "document.querySelector('.gs-run').gradsonicView"
                page.wait_for_selector(".gs-run", timeout=120_000, state="attached")
                page.wait_for_function(f"{view} && {view}.store.next >= 100000", timeout=120_000)
                page.evaluate(f"""() => {{
                  const v = {view}; const draw = v.draw.bind(v);
                  window.gsDraws = []; window.gsFrames = [];
                  v.draw = () => {{ const t = performance.now(); draw();
                                    gsDraws.push(performance.now() - t); }};
                  const tick = (t) => {{ gsFrames.push(t); requestAnimationFrame(tick); }};
                  requestAnimationFrame(tick);
                }}""")
                start = page.evaluate(f"{view}.store.next")
                time.sleep(seconds)
                frames = np.diff(page.evaluate("gsFrames"))
                draws = np.array(page.evaluate("gsDraws"))
                end = page.evaluate(f"{view}.store.next")
                b.close()
        finally:
            writer.kill()
    print(f"rows followed: {start} -> {end} in {seconds:.0f} s")
    print("| measure (ms) | median | p95 | max | count |")
    print("| --- | --- | --- | --- | --- |")
    for name, x in (("frame interval", frames), ("redraw of the view", draws)):
        print(f"| {name} | {np.median(x):.1f} | {np.percentile(x, 95):.1f} | {x.max():.1f} | "
              f"{len(x)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--kernel-only", action="store_true")
    args = ap.parse_args()
    from _harness import environment

    print(environment())
    kernel(args.rounds, args.steps)
    if not args.kernel_only:
        browser(args.seconds)


if __name__ == "__main__":
    main()

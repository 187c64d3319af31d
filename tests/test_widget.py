"""The notebook widget: kernel-side messages (every row once, few and bounded messages), and the
widget live in a real JupyterLab and Notebook 7 with a real kernel, driven from Chromium."""

from __future__ import annotations

import threading
from pathlib import Path
import time

import numpy as np
import pytest
import torch

from gradsonic import GradientSonifier
from gradsonic.errors import ConfigError
from gradsonic.follow import Tail
from gradsonic.recording import RecordingError, read_recording

from .fixtures.browser import browser  # noqa: F401  (a fixture)
from .fixtures.jupyter import KERNEL_IDLE, TOKEN, jupyter_app, run_next_cell, write_notebook
from .fixtures.models import TinyMLP, train_steps

anywidget = pytest.importorskip("anywidget") if False else None  # (the extra is in [test])

@pytest.fixture
def captured(monkeypatch):
    """Every message RunWidget sends, as (content, [bytes of each buffer])."""
    from gradsonic.widget import RunWidget

    sent: list[tuple[dict, list[bytes]]] = []
    lock = threading.Lock()

    def send(self, content, buffers=None):
        with lock:
            sent.append((content, [bytes(b) for b in buffers or []]))

    monkeypatch.setattr(RunWidget, "send", send)
    return sent

def rows_of(sent) -> dict[str, np.ndarray]:
    """The rows the browser would hold: batches applied in order, each row taken once."""
    steps, norms, nxt = [], [], 0
    for content, buffers in sent:
        if content["kind"] != "rows":
            continue
        for k, b in enumerate(content["batches"]):
            s = np.frombuffer(buffers[4 * k], "<f8")
            x = np.frombuffer(buffers[4 * k + 1], "<f4").reshape(b["n"], b["voices"])
            assert len(s) == b["n"]
            if b["first"] > nxt:
                raise AssertionError(f"a gap: rows {nxt}..{b['first']} never sent")
            keep = slice(nxt - b["first"], None)
            steps.append(s[keep])
            norms.append(x[keep])
            nxt = max(nxt, b["first"] + b["n"])
    return {"steps": np.concatenate(steps), "norms": np.concatenate(norms)}

def test_widget_sends_every_row_once_in_at_most_ten_messages_a_second(tmp_path, captured):
    model = TinyMLP()
    son = GradientSonifier(model, run_dir=tmp_path / "run")
    opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    w = son.widget()
    w._browser(w, {"kind": "hello", "from": 0}, [])  # the browser's module loaded
    t0 = time.monotonic()
    train_steps(model, opt, 1500)
    son.close()
    deadline = time.monotonic() + 10
    while not any(c.get("writing") is False for c, _ in captured):
        assert time.monotonic() < deadline, "no 'finished' state after close()"
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    rows = [c for c, _ in captured if c["kind"] == "rows"]
    got = rows_of(captured)
    rec = read_recording(tmp_path / "run" / "run.gsr")
    np.testing.assert_array_equal(got["steps"], rec.steps)
    np.testing.assert_array_equal(got["norms"], rec.norms.astype(np.float32))
    # after hello nothing is sent twice, and batches come at most every SEND_SECONDS (+ hello)
    assert sum(b["n"] for c in rows for b in c["batches"]) == len(rec.steps)
    assert len(rows) <= 10 * elapsed + 2, (len(rows), elapsed)
    assert len(rows) < len(rec.steps) / 10  # never one message per step
    assert [c["kind"] for c, _ in captured][-1] == "state"  # "finished" after the last row
    assert w.meta["layer_names"] == list(son.layer_names) and w.meta["writing"] is True

def test_widget_opens_a_long_recording_in_few_bounded_messages(tmp_path, captured):
    from gradsonic.notebook import show
    from gradsonic.widget import MESSAGE_BYTES

    from .test_serve import Writer

    n, v = 1_000_000, 4
    w_ = Writer(tmp_path / "long.gsr", [f"l{i}" for i in range(v)])
    rng = np.random.default_rng(0)
    for k in range(0, n, 250_000):
        w_.write(rng.lognormal(size=(250_000, v)).astype(np.float32))
    w_.close()
    w = show(tmp_path / "long.gsr")
    w._browser(w, {"kind": "hello", "from": 0}, [])
    while w.poll():
        pass
    rows = [(c, b) for c, b in captured if c["kind"] == "rows"]
    sizes = [sum(len(x) for x in b) for _, b in rows]
    assert w.rows_sent == n
    assert max(sizes) <= MESSAGE_BYTES + 4096 * (10 + 5 * v)
    assert len(rows) <= -(-n * (9 + 5 * v) // MESSAGE_BYTES) + 1  # ~4 messages for 29 MB
    got = rows_of(captured)
    assert len(got["steps"]) == n and got["steps"][-1] == n - 1
    w.close()

def test_widget_resends_what_the_browser_asks_for(tmp_path, captured):
    model = TinyMLP()
    son = GradientSonifier(model, run_dir=tmp_path / "run")
    opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    train_steps(model, opt, 40)
    son.flush()
    w = son.widget()
    w._browser(w, {"kind": "hello", "from": 0}, [])
    assert w.rows_sent == 40
    captured.clear()
    w._browser(w, {"kind": "want", "from": 25, "to": 40}, [])  # a message the browser missed
    (content, buffers), = [m for m in captured if m[0]["kind"] == "rows"]
    assert content["batches"][0]["first"] == 25 and content["batches"][0]["n"] == 15
    np.testing.assert_array_equal(np.frombuffer(buffers[0], "<f8"), np.arange(25, 40))
    w._browser(w, {"kind": "want", "from": "x"}, [])  # junk is ignored
    w._browser(w, "junk", [])
    son.close()
    w.close()

def test_widget_errors_name_what_is_wrong(tmp_path):
    from gradsonic.notebook import show

    with pytest.raises(FileNotFoundError, match="no file at"):
        show(tmp_path / "nope.gsr")
    (tmp_path / "not.gsr").write_bytes(b"RIFF....WAVE")
    with pytest.raises(RecordingError):
        show(tmp_path / "not.gsr")
    son = GradientSonifier(TinyMLP(), wav=tmp_path / "a.wav")
    with pytest.raises(ConfigError, match="record="):
        son.widget()
    son.close()

# ---- in a real notebook ------------------------------------------------------------------------

CELL_SETUP = """\
import torch
from gradsonic import GradientSonifier
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                            torch.nn.ReLU(), torch.nn.Linear(8, 2))
son = GradientSonifier(model, run_dir="run")
opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
son.widget()"""

CELL_TRAIN = """\
import os, time
step, x = 0, torch.randn(16, 4)
while not os.path.exists("stop") and step < 100_000:  # the test says when to stop
    opt.zero_grad(); model(x).pow(2).mean().backward(); opt.step(); step += 1
    time.sleep(0.005)
son.close()"""

VIEW = "document.querySelector('.gs-run').gradsonicView"

@pytest.mark.parametrize("kind", ["lab", "notebook"])
def test_widget_follows_training_live_in_jupyter(tmp_path, browser, kind):  # noqa: F811
    from gradsonic.render import frames

    write_notebook(tmp_path / "train.ipynb", [CELL_SETUP, CELL_TRAIN])
    with jupyter_app(kind, tmp_path) as base:
        ctx = browser.new_context(viewport={"width": 1200, "height": 900})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"{e} {e.stack}"))
        path = "lab/tree/train.ipynb" if kind == "lab" else "notebooks/train.ipynb"
        page.goto(f"{base}{path}?token={TOKEN}")
        page.wait_for_function(KERNEL_IDLE, timeout=120_000, polling=200)
        run_next_cell(page)  # the widget
        page.wait_for_function("document.querySelectorAll('[data-testid=voice]').length === 3",
                               timeout=60_000)
        assert page.get_by_test_id("voice").all_inner_texts() == ["0", "2", "4"]
        run_next_cell(page)  # training, until the file "stop" appears
        seen = []
        for _ in range(3):  # the latest step advances while the cell runs
            last = int(seen[-1]) if seen else -1
            page.wait_for_function(
                f"Number(document.querySelector('[data-testid=latest-step]').textContent) > {last}",
                timeout=30_000)
            seen.append(int(page.get_by_test_id("latest-step").inner_text()))
        assert not (tmp_path / "stop").exists()
        (tmp_path / "stop").write_text("")
        page.wait_for_function(f"{VIEW}.writing === false", timeout=60_000)
        rec = read_recording(tmp_path / "run" / "run.gsr")
        n = len(rec.steps)
        page.wait_for_function(f"{VIEW}.store.next === {n}", timeout=30_000)
        assert page.get_by_test_id("latest-step").inner_text() == str(n - 1)
        assert seen[0] < seen[1] < seen[2] <= n - 1
        # the finished run still plays, exactly what gradsonic renders from the recording
        for lo, hi in [(0, n // 2), (n // 2, n)]:
            got = np.array(page.evaluate(f"{VIEW}.renderOffline({lo}, {hi})"), np.float32)
            want = np.concatenate(list(frames(rec, steps=slice(lo, hi))))
            want = want.reshape(len(want), -1).T
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-4
        # the widget's own markup passes axe-core's WCAG 2.2 A/AA checks, as the page does
        from axe_playwright_python.sync_playwright import Axe

        from .test_page_access import WCAG

        found = Axe().run(page, context=".gs-run", options={"runOnly": {"type": "tag",
                                                                          "values": WCAG}})
        assert [v["id"] for v in found.response["violations"]] == []
        ctx.close()
    # Notebook 7's own document model reports one error while it loads a notebook written on
    # disk (in its notebook_core bundle, not in the widget); any other page error fails.
    ours = [e for e in errors if not ("reading 'schema'" in e and "notebook_core" in e)]
    assert not ours, ours

def test_widget_reads_recording_tail_like_the_server(tmp_path):
    """The widget and the server read rows through one Tail: the arrays the widget sends are
    the page's base64 batches, decoded."""
    import base64

    model = TinyMLP()
    son = GradientSonifier(model, run_dir=tmp_path / "run")
    opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
    train_steps(model, opt, 30)
    son.close()
    with Tail(tmp_path / "run" / "run.gsr") as tail:
        raw, enc = tail.batches(0, 30, raw=True)[0], tail.batches(0, 30)[0]
    for key, dtype in [("steps", "<f8"), ("norms", "<f4"), ("bits", "u1"), ("skipped", "u1")]:
        np.testing.assert_array_equal(
            np.frombuffer(base64.b64decode(enc[key]), dtype), raw[key].reshape(-1))


def test_the_example_notebook_runs(tmp_path):
    """examples/notebook_widget.ipynb, executed by a real kernel (40 steps instead of 400): the
    widget is shown twice (live, then from the recording) and the run is complete."""
    import nbclient  # (jupyter_server -> nbconvert -> nbclient)
    import nbformat

    src = Path(__file__).resolve().parent.parent / "examples" / "notebook_widget.ipynb"
    text = src.read_text()
    assert "range(400)" in text
    nb = nbformat.reads(text.replace("range(400)", "range(40)"), as_version=4)
    nbclient.NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    views = [o for c in nb.cells for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 2
    assert read_recording(tmp_path / "gradsonic-runs" / "notebook" / "run.gsr").steps.tolist() == \
        list(range(40))
    assert nb.cells[2]["outputs"][-1]["text"].startswith("40 steps")

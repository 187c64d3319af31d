"""Rebuild docs/assets: the seed presets and a 75-layer model as short OGG clips with their plots,
the mapping picture, and screenshots of the ``gradsonic serve`` page and the notebook widget (real
headless Chromium; the widget in a real JupyterLab running examples/notebook_widget.ipynb).

    python scripts/make_docs_assets.py        # uses the embedded MNIST subset; ~2 minutes
    python scripts/make_docs_assets.py widget # only the widget's screenshot (also: serve, listen)

Clips are rendered with the defaults a user gets (the log mapping, accents, at most 16 voices);
the presets were recorded with the demo's 2019 mapping and are re-rendered from their recordings.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from gradsonic import GradientSonifier, LogMapping, SeedMapping
from gradsonic.cli import main as cli
from gradsonic.demo import PRESETS
from gradsonic.plot import plot_recording
from gradsonic.recording import read_recording

ASSETS = Path(__file__).resolve().parent.parent / "docs" / "assets"
STEPS = 100  # 6 s of sound per preset keeps the five clips to a few hundred KB
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def mapping_picture() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = np.logspace(-6, 6, 400)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for mapping, label in ((LogMapping(), '"log" (default): C6 at norm 1, half an octave/decade'),
                           (SeedMapping(), '"seed": 200 + 100 x norm Hz')):
        hz = mapping(norms)
        lo, hi = mapping.band
        inside = (hz >= lo) & (hz <= hi)
        line, = ax.plot(norms[inside], hz[inside], label=label)
        ax.plot(norms[~inside], np.clip(hz[~inside], lo, hi), ls=":", color=line.get_color())
    ax.axhspan(LogMapping().min_hz, LogMapping().max_hz, color="grey", alpha=0.12,
               label="the default band, C4-C8 (dotted: over-range timbre at the edge)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gradient norm")
    ax.set_ylabel("tone frequency (Hz)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(ASSETS / "mappings.png", dpi=80)
    plt.close(fig)


def large_model(tmp: Path, assets: bool = True) -> None:
    """A 75-layer residual MLP (16 voices by default), one layer's gradient x10 at step 40."""
    from sound_budget import Residual

    for layout in ("sequence", "chord"):
        torch.manual_seed(0)
        model = Residual()
        run = tmp / f"large-{layout}"
        run.mkdir()
        with GradientSonifier(model, wav=None, record=run / "run.gsr", layout=layout,
                              quiet=True) as son:
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
            for i in range(80):
                opt.zero_grad()
                model(torch.randn(16, 32)).pow(2).mean().backward()
                if i == 40:
                    model.blocks[37].weight.grad.mul_(10.0)
                opt.step()
        if not assets:
            continue
        name = "large-model" if layout == "sequence" else "large-model-chord"
        cli(["render", str(run / "run.gsr"), "-o", str(ASSETS / f"{name}.ogg"), "--format", "ogg",
             "-q"])
        if layout == "sequence":
            plot_recording(read_recording(run / "run.gsr"), ASSETS / f"{name}.png", dpi=60)


def serve_screenshot(recordings: Path) -> None:
    """The serve page on a folder of runs, one of them open, as a person sees it."""
    from gradsonic.server import Server

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fixtures.browser import CHROMIUM
    from playwright.sync_api import sync_playwright

    with Server(recordings, port=0) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900}, bypass_csp=True)
        page.goto(srv.url + "?run=large-sequence/run.gsr")
        page.wait_for_function("window.gradsonic && gradsonic.store.next === 80")
        page.locator("#plot").focus()  # exploring from the keyboard: step 40, the spike
        page.keyboard.press("Home")
        for _ in range(4):
            page.keyboard.press("PageUp")
        page.wait_for_timeout(300)
        page.screenshot(path=str(ASSETS / "serve.png"))
        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True,
                                 has_touch=True, bypass_csp=True)
        phone.goto(srv.url + "?run=large-sequence/run.gsr")
        phone.wait_for_function("window.gradsonic && gradsonic.store.next === 80")
        phone.wait_for_timeout(300)
        phone.screenshot(path=str(ASSETS / "serve-phone.png"))
        browser.close()


def widget_screenshot(tmp: Path) -> None:
    """The notebook widget in JupyterLab after examples/notebook_widget.ipynb's training cell."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fixtures.browser import CHROMIUM
    from fixtures.jupyter import KERNEL_IDLE, TOKEN, jupyter_app, run_next_cell
    from playwright.sync_api import sync_playwright

    example = Path(__file__).resolve().parent.parent / "examples" / "notebook_widget.ipynb"
    shutil.copy(example, tmp / "notebook_widget.ipynb")
    with jupyter_app("lab", tmp) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        page.goto(f"{base}lab/tree/notebook_widget.ipynb?token={TOKEN}")
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)
        page.evaluate("() => jupyterapp.commands.execute('notebook:run-cell-and-select-next')")
        for _ in range(2):  # the widget, then training
            run_next_cell(page)
            page.wait_for_function(KERNEL_IDLE, timeout=600_000)
        view = "document.querySelector('.gs-run').gradsonicView"
        page.wait_for_function(f"{view}.writing === false && {view}.store.next === 400", timeout=600_000)
        page.evaluate("() => jupyterapp.commands.execute('application:toggle-left-area')")
        page.wait_for_timeout(500)
        page.locator(".gs-run").first.screenshot(path=str(ASSETS / "widget.png"))
        browser.close()


def listening(tmp: Path) -> None:
    """The listenability benchmark's run (lr x60 at 150-169, NaN at 250), steps 100-280, in each
    layout."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from listenability import make_run

    run = make_run(tmp / "catastrophe")
    for layout in ("sequence", "chord", "ambient"):
        cli(["render", str(run), "-o", str(ASSETS / f"catastrophe-{layout}.ogg"), "--steps",
             "100:280", "--layout", layout, "-q"])


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["listen"]:  # only the layouts' clips
        with tempfile.TemporaryDirectory() as tmp:
            listening(Path(tmp))
        return
    if sys.argv[1:] == ["widget"]:  # only the notebook widget's screenshot
        with tempfile.TemporaryDirectory() as tmp:
            widget_screenshot(Path(tmp))
        return
    if sys.argv[1:] == ["serve"]:  # only the page's screenshots
        with tempfile.TemporaryDirectory() as tmp:
            large_model(Path(tmp), assets=False)
            serve_screenshot(Path(tmp))
        return
    mapping_picture()
    with tempfile.TemporaryDirectory() as tmp:
        cli(["demo", "--steps", str(STEPS), "--record", "-q", "--out", tmp])
        for name in PRESETS:
            run = Path(tmp) / f"{name}.gsr"
            cli(["render", str(run), "-o", str(ASSETS / f"{name}.ogg"), "--format", "ogg",
                 "--mapping", "log", "-q"])
            plot_recording(read_recording(run), ASSETS / f"{name}.png", dpi=60, mapping="log")
        large_model(Path(tmp))
        listening(Path(tmp))
        serve_screenshot(Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        widget_screenshot(Path(tmp))


if __name__ == "__main__":
    main()

"""The listening page for everyone: axe-core finds no WCAG 2.2 A/AA violation, every control is
reachable from the keyboard, the plot is explored with the arrow keys and announced to screen
readers, a phone shows it without sideways scrolling, and alarms reach a hidden tab."""

from __future__ import annotations


import numpy as np
import pytest

from gradsonic.server import Server

from .fixtures.browser import browser, page_of  # noqa: F401 (browser: a fixture)
from .test_serve import Writer, noisy

WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]




@pytest.fixture
def run16(tmp_path):
    """A finished 16-voice run with a spike, a NaN and a value far beyond the rest."""
    names = [f"encoder.layers.{i}" for i in range(16)]
    norms = noisy(120, 16, 3)
    norms[40, 2] *= 60  # a spike
    norms[70, 5] = np.nan  # an alarm
    norms[90, 9] = 1e12  # beyond the plotted range
    w = Writer(tmp_path / "run.gsr", names)
    w.write(norms)
    w.close()
    return tmp_path


def axe_violations(page) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG}})
    return [f"{v['id']}: {v['help']} ({len(v['nodes'])} nodes: "
            f"{[n['target'] for n in v['nodes'][:3]]})"
            for v in results.response["violations"]]


def open_run(page, srv):
    page.goto(srv.url)
    page.get_by_test_id("run").first.click()
    page.wait_for_function("window.gradsonic && gradsonic.store.next === 120")
    page.wait_for_function("document.getElementById('summary')?.textContent.length > 0")


def test_axe_finds_no_wcag_violation_on_the_run_list_and_a_run(run16, browser):
    with Server(run16, port=0) as srv, page_of(browser) as page:
        page.goto(srv.url)
        page.get_by_test_id("run").first.wait_for()
        assert axe_violations(page) == []
        open_run(page, srv)
        assert axe_violations(page) == []


def test_a_keyboard_journey_with_the_announcements_a_screen_reader_reads(run16, browser):
    with Server(run16, port=0) as srv, page_of(browser) as page:
        open_run(page, srv)
        order = []
        page.locator("body").focus()
        for _ in range(60):  # Tab through the page: every control, in reading order
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.id || "
                                       "document.activeElement.getAttribute('aria-label') || "
                                       "document.activeElement.tagName"))
            if order[-1] == "plot":
                break
        for expected in ("play", "live", "next-alarm", "next-accent", "policy", "notify",
                         "mute encoder.layers.0", "hear encoder.layers.15 alone", "plot"):
            assert expected in order, (expected, order)
        assert order.index("play") < order.index("notify") < order.index(
            "mute encoder.layers.0") < order.index("plot")
        live = page.get_by_test_id("announce")
        assert live.get_attribute("aria-live") == "polite"
        page.keyboard.press("Home")
        assert live.text_content().startswith("step 0, encoder.layers.0 ")
        page.keyboard.press("ArrowRight")
        assert live.text_content().startswith("step 1, encoder.layers.0 ")
        page.keyboard.press("PageUp")
        assert live.text_content().startswith("step 11, ")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert live.text_content().startswith("step 11, encoder.layers.2 ")
        for _ in range(29):
            page.keyboard.press("ArrowRight")
        assert live.text_content().startswith("step 40, encoder.layers.2 ")
        assert "spike" in live.text_content()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        for _ in range(3):
            page.keyboard.press("PageUp")
        assert live.text_content() == "step 70, encoder.layers.5 NaN, alarm: NaN/Inf gradient"
        page.keyboard.press("End")
        assert live.text_content().startswith("step 119, encoder.layers.5 ")
        assert page.evaluate("gradsonic.player.sources.length") >= 1  # each move plays
        page.keyboard.press(" ")
        assert page.evaluate("gradsonic.player.playing") is True
        assert live.text_content().startswith("playing")
        page.keyboard.press(" ")
        assert page.evaluate("gradsonic.player.playing") is False
        summary = page.get_by_test_id("summary").text_content()
        assert "16 voices: encoder.layers.0" in summary and "120 steps (0 to 119)" in summary
        assert "1 step with a NaN/Inf alarm, the first at step 70" in summary
        assert "steps with a spike or collapse, the first at step" in summary
        assert "Latest, step 119: encoder.layers.0 " in summary


def test_sixteen_voices_have_distinct_styles_and_labels(run16, browser):
    with Server(run16, port=0) as srv, page_of(browser) as page:
        open_run(page, srv)
        styles = page.evaluate("[...Array(16).keys()].map(v => voiceColor(v) + voiceDash(v))")
        assert len(set(styles)) == 16
        # every curve is named on the plot, every strip row labelled: words drawn on the canvas
        drawn = page.evaluate("""(() => {
            const seen = []; const orig = CanvasRenderingContext2D.prototype.fillText;
            CanvasRenderingContext2D.prototype.fillText = function (t, ...a) { seen.push(t); return orig.call(this, t, ...a); };
            gradsonic.draw(); CanvasRenderingContext2D.prototype.fillText = orig; return seen; })()""")
        for v in range(16):
            assert drawn.count(f"encoder.layers.{v}") == 2, v  # curve end + strip row
        assert any(t.startswith("1e") for t in drawn)


def test_a_phone_shows_the_run_without_sideways_scrolling(run16, browser):
    with Server(run16, port=0) as srv, page_of(browser, viewport={"width": 390, "height": 844},
                                              is_mobile=True, has_touch=True) as page:
        open_run(page, srv)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        sizes = page.evaluate("[...document.querySelectorAll('button')].map(b => "
                              "[b.getBoundingClientRect().width, b.getBoundingClientRect().height])")
        assert min(min(s) for s in sizes) >= 44  # touch targets
        assert axe_violations(page) == []


def test_an_alarm_notifies_a_hidden_tab_and_sounds_while_paused(tmp_path, browser):
    w = Writer(tmp_path / "run.gsr", ["a", "b"])
    w.write(noisy(30, 2))
    with Server(tmp_path, port=0) as srv, page_of(browser) as page:
        page.context.grant_permissions(["notifications"])
        page.add_init_script("""
            window.__notes = [];
            window.Notification = class { constructor(t, o) { window.__notes.push([t, o.body]); }
                                          static get permission() { return "granted"; }
                                          static requestPermission() { return Promise.resolve("granted"); } };
            Object.defineProperty(document, "hidden", { get: () => window.__hidden === true });""")
        page.goto(srv.url + "?run=run.gsr")
        page.wait_for_function("window.gradsonic && gradsonic.store.next === 30")
        page.get_by_test_id("notify").click()
        assert page.get_by_test_id("notify").get_attribute("aria-pressed") == "true"
        page.evaluate("window.__hidden = true")
        norms = noisy(10, 2, 5)
        norms[4:7, 1] = np.nan  # one stretch of alarms: one alert
        w.write(norms)
        page.wait_for_function("gradsonic.store.next === 40")
        page.wait_for_function("window.__notes.length === 1")
        title, body = page.evaluate("window.__notes[0]")
        assert title == "gradsonic: alarm in run.gsr" and body == "step 34: NaN/Inf gradient in b"
        assert page.evaluate("gradsonic.cues") == 1  # heard although nothing was playing
        assert page.get_by_test_id("announce").text_content().startswith("alarm: step 34")
        w.close()

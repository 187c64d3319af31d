"""The built docs site works in a real browser: every audio player and picture loads."""

from __future__ import annotations

import subprocess
import sys

import soundfile

from .conftest import REPO
from .fixtures.browser import chromium_page, static_server

MEDIA = """async () => {
  const audios = await Promise.all([...document.querySelectorAll('audio')].map(a =>
    new Promise(done => {
      const report = () => done({src: a.currentSrc || a.src, error: a.error && a.error.code,
                                 duration: a.duration});
      if (a.readyState >= 1 || a.error) return report();
      a.addEventListener('loadedmetadata', report, {once: true});
      a.addEventListener('error', report, {once: true});
      a.preload = 'metadata';
      a.load();
    })));
  const images = await Promise.all([...document.querySelectorAll('img')].map(i =>
    new Promise(done => {
      const report = () => done({src: i.currentSrc || i.src, width: i.naturalWidth});
      if (i.complete) return report();
      i.addEventListener('load', report, {once: true});
      i.addEventListener('error', report, {once: true});
    })));
  return {audios, images};
}"""


def test_every_audio_player_and_picture_on_every_page_loads(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) >= 8
    seen_audio = seen_images = 0
    with static_server(site) as base, chromium_page() as page:
        for html in pages:
            url = f"{base}/{html.relative_to(site).as_posix()}"
            response = page.goto(url)
            assert response is not None and response.ok, url
            media = page.evaluate(MEDIA)
            for audio in media["audios"]:
                assert audio["error"] is None, (url, audio)  # 4 = MEDIA_ERR_SRC_NOT_SUPPORTED
                local = site / audio["src"].removeprefix(base + "/")
                expected = soundfile.info(str(local)).duration
                assert abs(audio["duration"] - expected) < 0.05, (url, audio, expected)
            for image in media["images"]:
                assert image["width"] > 0, (url, image)
            seen_audio += len(media["audios"])
            seen_images += len(media["images"])
    assert seen_audio >= 5 and seen_images >= 6  # the presets page's clips and plots at least

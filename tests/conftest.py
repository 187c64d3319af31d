from __future__ import annotations

import atexit
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import weakref
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

# Real playback goes through PortAudio -> ALSA into ALSA's `file` plugin (see AUDIO_TESTING.md):
# every sample that reaches the "device" lands in CAPTURE. It must be set before any PyAudio().
AUDIO_DIR = Path(tempfile.mkdtemp(prefix="gradsonic-alsa-"))
CAPTURE = AUDIO_DIR / "capture.raw"
(AUDIO_DIR / "asound.conf").write_text(
    'pcm.!default {\n type file\n slave.pcm { type null }\n'
    f' file "{CAPTURE}"\n format "raw"\n}}\n')
os.environ["ALSA_CONFIG_PATH"] = str(AUDIO_DIR / "asound.conf")
# ALSA's null device has no clock: an open stream writes as fast as the CPU allows, tens of MB a
# second, so the capture never outlives the session (a hung session's filled a 250 GB disk).
atexit.register(shutil.rmtree, AUDIO_DIR, ignore_errors=True)


def _stop_session(signum, frame):  # `timeout` (and CI) stop a session with SIGTERM: end it as
    raise KeyboardInterrupt(f"signal {signum}")  # Ctrl-C does, so the atexit above runs


signal.signal(signal.SIGTERM, _stop_session)
# A session started as a background job (`pytest &` in a script) inherits SIGINT *ignored*, and
# so would every child it spawns: Python then installs no Ctrl-C handler, and the tests that
# interrupt a child training run waited on a child that trained on. A handler here is reset to
# the default in each child at exec, as a terminal would leave it.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Test this checkout's code, also in child processes, whichever checkout pip installed.
sys.path.insert(0, str(REPO / "src"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])


def pytest_configure(config):
    # An unexpected gradsonic warning fails the test. Registered here, after src/ was put first
    # on sys.path: naming the class in pyproject.toml would import an installed gradsonic early.
    config.addinivalue_line("filterwarnings", "error::gradsonic.GradsonicWarning")
    # Many tests build a sonifier and close it without a step; test_voices checks this warning.
    config.addinivalue_line("filterwarnings",
                            "ignore:gradsonic heard no optimizer step:gradsonic.GradsonicWarning")


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gradsonic-worker" and t.is_alive()]


@pytest.fixture(autouse=True)
def _no_leaks(tmp_path, monkeypatch):
    """Run each test in its own folder and fail it if it leaves a worker thread or open sink."""
    from gradsonic.sinks.base import Sink

    monkeypatch.chdir(tmp_path)
    created: weakref.WeakSet[Sink] = weakref.WeakSet()

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in {Sink, *subclasses(Sink)}:
        def tracking_init(self, *args, __init=cls.__init__, **kwargs):
            __init(self, *args, **kwargs)
            created.add(self)

        monkeypatch.setattr(cls, "__init__", tracking_init)
    before = set(_workers())
    yield
    gc.collect()
    leaked = [t for t in _workers() if t not in before]
    open_sinks = [s for s in created if not s.closed]
    assert not leaked, f"test left {len(leaked)} gradsonic worker thread(s) running: close() it"
    assert not open_sinks, f"test left sinks open: {open_sinks!r}"


@pytest.fixture(scope="session")
def mnist_dir() -> Path | None:
    """The real MNIST copy beside the repo (CI and dev machines), else None: embedded subset."""
    env = os.environ.get("GRADSONIC_MNIST")
    if env:
        return Path(env)
    return SHARED_MNIST if SHARED_MNIST.is_dir() else None


@pytest.fixture(scope="session")
def mnist_slice(mnist_dir):
    from gradsonic.demo import load_mnist

    x, y = load_mnist(mnist_dir)
    return x[:2000], y[:2000]

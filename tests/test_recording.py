"""The norm recording: streamed, crash-safe, read back, re-rendered to the live run's samples."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch

from gradsonic import GradientSonifier
from gradsonic.cli import main
from gradsonic.render import render_to_file
from gradsonic.recording import read_recording

from .fixtures.models import TinyMLP, train_steps

TONE = 441


def record_run(steps=6, **kw):
    model = TinyMLP()
    records = []
    with GradientSonifier(model, wav="live.wav", record="run.gsr", on_step=records.append,
                          quiet=True, **kw) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=steps)
    return records


def test_recording_holds_every_step_norms_and_settings():
    records = record_run(mapping="seed", tone_duration=0.005)
    rec = read_recording("run.gsr")
    assert rec.layer_names == ("fc1", "fc2", "head")
    assert rec.steps.tolist() == list(range(6))
    np.testing.assert_array_equal(rec.norms, np.stack([r.norms for r in records]))
    assert not rec.missing.any() and not rec.skipped.any()
    assert rec.settings["mapping"] == {"kind": "seed", "offset_hz": 200.0, "hz_per_unit": 100.0,
                                       "min_hz": 200.0, "max_hz": 4200.0}
    assert rec.settings["accents"]["spike_factor"] == 3.0 and rec.settings["every"] == 1
    assert rec.settings["tone_duration"] == 0.005 and rec.versions["gradsonic"]
    # compact: fixed binary rows of 8 + 4 + 3 * 4 + 3 bytes, padded to 32, after the header
    raw = open("run.gsr", "rb").read()
    header_end = 12 + int.from_bytes(raw[8:12], "little")
    assert len(raw) - header_end == 6 * 32


@pytest.mark.parametrize("mapping", ["log", "seed"])
def test_render_with_the_recorded_settings_equals_the_live_run(mapping):
    record_run(mapping=mapping)
    assert main(["render", "run.gsr", "-o", "again.wav", "-q"]) == 0
    live, _ = soundfile.read("live.wav", dtype="float32")
    again, _ = soundfile.read("again.wav", dtype="float32")
    np.testing.assert_array_equal(again, live)


def test_render_with_other_settings_layers_steps_and_formats(capsys):
    record_run(steps=10)
    assert main(["render", "run.gsr", "-o", "part.flac", "--format", "flac", "--mapping", "seed",
                 "--tone-ms", "20", "--layers", "fc*", "--steps", "2:7", "-q"]) == 0
    info = soundfile.info("part.flac")
    # 20 ms tones, and the silence stays two tone lengths (the run used the default)
    assert info.format == "FLAC" and info.frames == 5 * (2 * 2 * TONE + 2 * 2 * TONE)
    assert "5 steps" in capsys.readouterr().out
    progress = []
    render_to_file(read_recording("run.gsr"), "p.wav", progress=progress.append)
    assert sum(progress) == 10  # counted in recorded steps, not chunks
    assert main(["render", "run.gsr", "-o", "all.ogg", "--format", "ogg", "-q"]) == 0
    assert soundfile.info("all.ogg").format == "OGG"


def test_info_describes_the_run(capsys):
    record_run(steps=4)
    assert main(["info", "run.gsr"]) == 0
    out = capsys.readouterr().out
    assert "steps: 4 (0..3)" in out and "layers (3): fc1, fc2, head" in out
    assert "non-finite: 0 steps" in out and '"kind": "log"' in out


@pytest.mark.parametrize("argv, message", [
    (["info", "missing.gsr"], "error: cannot read recording 'missing.gsr'"),
    (["render", "live.wav", "-o", "x.wav"], "error: 'live.wav' is not a gradsonic recording"),
    (["render", "run.gsr", "-o", "x.wav", "--layers", "conv*"], "error: --layers ['conv*'] match"),
    (["render", "run.gsr", "-o", "x.wav", "--steps", "a:b"], "error: --steps must look like A:B"),
    (["plot", "run.gsr", "-o", "x.png", "--layers", "nope"], "error: --layers ['nope'] match"),
    (["plot", "missing.gsr", "-o", "x.png"], "error: cannot read recording 'missing.gsr'"),
    (["play", "missing.wav"], "error: "),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    record_run(steps=2)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1


def test_recording_is_readable_after_sigkill(tmp_path):
    script = (
        "import time, torch\n"
        "from gradsonic import GradientSonifier\n"
        "m = torch.nn.Linear(4, 4)\n"
        "son = GradientSonifier(m, wav=None, record='killed.gsr')\n"
        "opt = son.wrap(torch.optim.SGD(m.parameters(), lr=0.01))\n"
        "i = 0\n"
        "while True:\n"
        "    opt.zero_grad(); m(torch.randn(2, 4)).sum().backward(); opt.step()\n"
        "    i += 1\n"
        "    print(i, flush=True)\n"
        "    time.sleep(0.002)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE)
    proc.stdout.readline()
    t0 = time.monotonic()
    done = []
    while time.monotonic() - t0 < 2.5:
        done.append((time.monotonic(), int(proc.stdout.readline())))
    proc.kill()
    proc.wait(timeout=30)
    t_kill = time.monotonic()
    rec = read_recording(tmp_path / "killed.gsr")
    before = max(n for t, n in done if t <= t_kill - 1.5)
    assert len(rec.steps) >= before > 50
    assert rec.steps.tolist() == list(range(len(rec.steps)))  # no torn or garbage rows
    assert np.all(np.isfinite(rec.norms))


def test_demo_record_writes_recordings_and_prints_the_commands(tmp_path, capsys):
    assert main(["demo", "--preset", "adam-lr0.01", "--steps", "3", "--record", "-q",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rec = read_recording(tmp_path / "adam-lr0.01.gsr")
    assert rec.layer_names == ("conv1", "conv2", "fc1", "fc2") and len(rec.steps) == 3
    assert f"gradsonic render {tmp_path / 'adam-lr0.01.gsr'}" in out
    assert f"gradsonic plot {tmp_path / 'adam-lr0.01.gsr'}" in out


def test_plot_writes_a_png_with_both_panels(tmp_path):
    import matplotlib.image

    record_run(steps=12)
    out = tmp_path / "run.png"
    assert main(["plot", "run.gsr", "-o", str(out)]) == 0
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 500 and image.shape[1] > 1000  # 12 x 7 in at 110 dpi
    top, bottom = image[: image.shape[0] // 2], image[image.shape[0] // 2:]
    assert top.std() > 0.05 and bottom.std() > 0.05  # both panels hold a picture


def test_play_a_wav_and_a_recording_through_real_pyaudio(capsys):
    from .conftest import CAPTURE

    record_run(steps=5)
    live, _ = soundfile.read("live.wav", dtype="float32")
    for path in ("live.wav", "run.gsr"):  # a recording renders with its recorded settings
        assert main(["play", path]) == 0
        captured = np.fromfile(CAPTURE, dtype="<f4")
        np.testing.assert_array_equal(captured[captured != 0], live[live != 0])


def test_play_on_a_headless_machine_is_one_error_line(tmp_path):
    record_run(steps=2)
    env = {k: v for k, v in __import__("os").environ.items() if k != "ALSA_CONFIG_PATH"}
    proc = subprocess.run([sys.executable, "-m", "gradsonic.cli", "play", "live.wav"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no audio output device")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_notebook_audio_of_a_run_and_of_a_recording():
    from IPython.display import Audio

    from gradsonic.notebook import play

    model = TinyMLP()
    with GradientSonifier(model, wav="nb.wav", record="nb.gsr") as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        train_steps(model, opt, steps=3)
        inline = son.audio()
    assert isinstance(inline, Audio) and b"RIFF" in inline.data[:4]
    from_recording = play("nb.gsr")
    assert isinstance(from_recording, Audio) and from_recording.data == inline.data


def test_logged_scalars_are_stored_with_their_step():
    model = TinyMLP()
    losses = []
    with GradientSonifier(model, wav=None, record="s.gsr", scalars=("loss", "lr")) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        for i in range(4):
            opt.zero_grad()
            loss = model(torch.randn(4, 8)).pow(2).mean()
            loss.backward()
            son.log(loss=loss) if i != 2 else None  # a tensor: read on the worker
            son.log(lr=0.05)
            losses.append(loss.item() if i != 2 else float("nan"))
            opt.step()
        with pytest.raises(ValueError, match=r"log\(\) got \['acc'\]; declared scalars are "):
            son.log(acc=1.0)
    rec = read_recording("s.gsr")
    np.testing.assert_allclose(rec.scalars["loss"], losses, rtol=1e-6)
    np.testing.assert_allclose(rec.scalars["lr"], [0.05] * 4, rtol=1e-6)
    with pytest.raises(ValueError, match=r"scalars are stored in the recording"):
        GradientSonifier(model, wav=None, scalars=("loss",))

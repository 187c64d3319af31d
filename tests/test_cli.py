"""The command line's edges: every mistake is one ``error:`` line and exit 1, never a traceback
or a file that is not what its name says."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch

from gradsonic import GradientSonifier
from gradsonic.cli import build_parser, main
from gradsonic.recording import read_recording
from gradsonic.render import frames

from .fixtures.models import TinyMLP, train_steps


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "run"
    model = TinyMLP()
    with GradientSonifier(model, run_dir=folder, quiet=True) as son:
        train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.05)), 12)
    return folder


def one_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_play_on_a_file_that_is_no_audio_is_one_line(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a recording, not audio")
    assert "neither a recording nor an audio file" in one_error(capsys, ["play", str(junk)])


@pytest.mark.parametrize("name,fmt,match", [
    ("x.mp3", None, "writes .wav, .flac or .ogg"),
    ("y.wav", "ogg", "is a .wav file but --format is 'ogg'"),
    ("noext", None, "without an extension")])
def test_render_refuses_a_name_that_lies_about_the_format(run, tmp_path, capsys, name, fmt,
                                                           match):
    argv = ["render", str(run), "-o", str(tmp_path / name), "-q"] + (
        ["--format", fmt] if fmt else [])
    assert match in one_error(capsys, argv)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name,container", [("a.wav", "WAV"), ("b.flac", "FLAC"),
                                            ("c.ogg", "OGG")])
def test_render_writes_the_format_its_extension_names(run, tmp_path, name, container):
    assert main(["render", str(run), "-o", str(tmp_path / name), "-q"]) == 0
    info = soundfile.info(str(tmp_path / name))
    assert info.format == container
    assert info.frames == sum(len(c) for c in frames(read_recording(run / "run.gsr")))


@pytest.mark.parametrize("steps,match", [("5:2", "B must be after A"), ("3", "look like A:B"),
                                         ("x:y", "look like A:B"),
                                         ("500:600", "selects none of the 12")])
def test_render_refuses_empty_or_backwards_step_ranges(run, tmp_path, capsys, steps, match):
    out = tmp_path / "r.wav"
    assert match in one_error(capsys, ["render", str(run), "-o", str(out), "--steps", steps])
    assert not out.exists()


def test_render_into_a_missing_folder_fails_before_drawing_progress(run, tmp_path, capsys):
    err = one_error(capsys, ["render", str(run), "-o", str(tmp_path / "nope" / "r.wav")])
    assert "does not exist" in err and "step" not in err


def test_info_on_a_folder_without_a_recording_says_so(tmp_path, capsys):
    err = one_error(capsys, ["info", str(tmp_path)])
    assert "folder without a recording (run.gsr)" in err and "Errno" not in err


def test_help_texts_say_what_the_commands_do():
    sub = build_parser()._subparsers._group_actions[0].choices
    assert "half an octave per decade" in sub["demo"].format_help()
    plot_help = sub["plot"].format_help() + build_parser().format_help()
    assert "spectrogram" not in plot_help and "pitches played" in plot_help


def test_serve_on_a_missing_folder_says_it_waits_for_runs(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gradsonic.cli", "serve",
                             str(tmp_path / "later"), "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(30)
    assert "does not exist yet" in line and "later" in line


def test_stats_right_after_the_loop_count_every_step():
    model = TinyMLP()
    with GradientSonifier(model, wav=None) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        for _ in range(3):  # the worker sleeps a moment before each block: stats must wait
            train_steps(model, opt, 5)
            assert son.stats.steps == son.steps
        time.sleep(0)
    assert np.isfinite(son.stats.frames)

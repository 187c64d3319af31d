"""A run's files are never lost, clobbered or mixed; resume continues them; bad files are errors.

Real child processes for everything that concerns other processes (locks, SIGKILL, two jobs);
WAVs read back with scipy, recordings with gradsonic's reader and checked row by row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradsonic import GradientSonifier, Sink
from gradsonic.cli import main
from gradsonic.files import FileInUseError
from gradsonic.recording import RecordingError, read_recording

from .conftest import REPO
from .fixtures.models import TinyMLP, small_recording, train_steps

CHILD = REPO / "tests" / "child_resume.py"
STEP = 2 * 441 + 2 * 441  # the child's model: 2 voices, 10 ms tones, 20 ms silence


def run_child(run_dir, total, mode="fast", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHILD), str(run_dir), str(total), mode],
                          capture_output=True, text=True, timeout=180, cwd=cwd)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


# -- where files go --------------------------------------------------------------------------


def test_default_output_is_a_fresh_run_folder_announced_once(capfd):
    model = TinyMLP()
    with GradientSonifier(model) as son:
        train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), steps=2)
    folder = son.sinks[0].path.parent
    assert folder.parent.name == "gradsonic-runs" and str(os.getpid()) in folder.name
    assert sorted(p.name for p in folder.iterdir()) == ["run.gsr", "run.wav"]
    assert read_recording(folder / "run.gsr").steps.tolist() == [0, 1]
    err = capfd.readouterr().err
    assert err.count("gradsonic: writing") == 1 and f"{folder}{os.sep} (run.wav, run.gsr)" in err
    with GradientSonifier(model, quiet=True) as son2:  # another run: another folder, silent
        pass
    assert son2.sinks[0].path.parent != folder and "gradsonic: writing" not in capfd.readouterr().err


def test_two_jobs_in_one_folder_with_defaults_keep_both_runs(tmp_path):
    procs = [subprocess.Popen([sys.executable, str(CHILD), "-", "120", "default"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    folders = sorted((tmp_path / "gradsonic-runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        rate, data = scipy.io.wavfile.read(folder / "run.wav")
        assert data.size == 120 * STEP
        assert read_recording(folder / "run.gsr").steps.tolist() == list(range(120))


# -- one writer per file ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["same thread", "another thread"])
def test_a_second_writer_of_the_same_file_in_this_process_is_refused(where):
    model = TinyMLP()
    first = GradientSonifier(model, wav="same.wav", record="same.gsr", quiet=True)
    opt = first.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    train_steps(model, opt, steps=2)
    errors = []

    def second():
        try:
            GradientSonifier(TinyMLP(), wav="other.wav", record="same.gsr", quiet=True)
        except FileInUseError as e:
            errors.append(e)

    if where == "same thread":
        second()
    else:
        t = threading.Thread(target=second)
        t.start()
        t.join()
    assert len(errors) == 1
    assert "record='same.gsr' is being written by the GradientSonifier created at" in str(
        errors[0]) and "test_files.py" in str(errors[0])
    assert not Path("other.wav").exists()  # the failed one left nothing behind
    train_steps(model, opt, steps=2)
    first.close()
    assert read_recording("same.gsr").steps.tolist() == [0, 1, 2, 3]  # nothing mixed in
    assert scipy.io.wavfile.read("same.wav")[1].size == 4 * 5 * 441


def test_a_file_another_process_writes_is_refused_and_left_intact(tmp_path):
    child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / "job"), "100000",
                              "slow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # it holds its files from the first step on
            assert child.stdout.readline().startswith("step")
        with pytest.raises(FileInUseError, match=rf"is being written by process {child.pid} "):
            GradientSonifier(TinyMLP(), wav=tmp_path / "job" / "run.wav", quiet=True)
        with pytest.raises(FileInUseError, match=rf"process {child.pid} \(.*child_resume.py"):
            GradientSonifier(TinyMLP(), run_dir=tmp_path / "job", resume=True, quiet=True)
    finally:
        child.send_signal(signal.SIGTERM)  # finalises its files (SIGTERM -> SystemExit)
        child.communicate(timeout=60)
    rec = read_recording(tmp_path / "job" / "run.gsr")
    n = len(rec.steps)
    assert n >= 20 and rec.steps.tolist() == list(range(n))
    assert scipy.io.wavfile.read(tmp_path / "job" / "run.wav")[1].size == n * STEP
    GradientSonifier(TinyMLP(), wav=tmp_path / "job" / "run.wav", quiet=True).close()  # free now


# -- resume ----------------------------------------------------------------------------------


def test_kill_9_then_resume_gives_one_gapless_run_equal_to_an_uninterrupted_one(tmp_path):
    total = 400
    child = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path / "job"), str(total),
                              "slow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(150):
        assert child.stdout.readline().startswith("step")
    child.kill()
    child.wait(timeout=30)
    kept = read_recording(tmp_path / "job" / "run.gsr")
    assert 0 < len(kept.steps) < total  # the kill landed mid-run
    proc = run_child(tmp_path / "job", total)  # the requeued job: same command, resume=True
    assert proc.returncode == 0, proc.stderr
    resumed_from = int(proc.stdout.split()[1])
    assert 0 < resumed_from <= len(kept.steps)
    assert run_child(tmp_path / "straight", total).returncode == 0  # never interrupted

    rec = read_recording(tmp_path / "job" / "run.gsr")
    ref = read_recording(tmp_path / "straight" / "run.gsr")
    assert rec.steps.tolist() == list(range(total))  # no gap, no duplicate
    np.testing.assert_array_equal(rec.norms, ref.norms)
    _, audio = scipy.io.wavfile.read(tmp_path / "job" / "run.wav")
    _, straight = scipy.io.wavfile.read(tmp_path / "straight" / "run.wav")
    assert audio.size == straight.size == total * STEP
    np.testing.assert_array_equal(audio, straight)


def test_resume_with_no_files_starts_fresh_and_a_torn_tail_is_cut(tmp_path):
    job = tmp_path / "job"
    assert run_child(job, 30).returncode == 0  # first start of a requeued job: nothing to resume
    with open(job / "run.gsr", "ab") as f:  # a torn row, as after SIGKILL mid-write
        f.write(b"\x01\x02\x03")
    with open(job / "run.wav", "ab") as f:  # half a step of audio past the header
        f.write(np.zeros(STEP // 2, dtype="<f4").tobytes())
    proc = run_child(job, 50)
    assert proc.returncode == 0 and proc.stdout.split()[1] == "30"
    assert read_recording(job / "run.gsr").steps.tolist() == list(range(50))
    assert scipy.io.wavfile.read(job / "run.wav")[1].size == 50 * STEP


def test_resume_at_a_checkpoint_step_keeps_the_steps_before_it(tmp_path):
    def run(steps, first, seed, **kw):
        torch.manual_seed(seed)
        model, heard = TinyMLP(), []
        with GradientSonifier(model, run_dir=tmp_path / "job", quiet=True, on_step=heard.append,
                              **kw) as son:
            assert son.steps == first
            train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), steps)
        return heard

    run(30, 0, seed=0, resume=True)  # the first start: nothing to resume
    first = read_recording(tmp_path / "job" / "run.gsr")
    again = run(10, 20, seed=1, resume=20)  # restarted from the checkpoint of step 20
    rec = read_recording(tmp_path / "job" / "run.gsr")
    assert rec.steps.tolist() == list(range(30)) and [r.step for r in again] == list(range(20, 30))
    np.testing.assert_array_equal(rec.norms[:20], first.norms[:20])
    np.testing.assert_array_equal(rec.norms[20:], [r.norms for r in again])
    assert not np.array_equal(rec.norms[20:], first.norms[20:])  # steps 20.. really replaced
    assert scipy.io.wavfile.read(tmp_path / "job" / "run.wav")[1].size == 30 * 5 * 441


def test_resume_refuses_other_settings_or_voices_and_names_the_difference(tmp_path):
    job = tmp_path / "job"
    assert run_child(job, 5).returncode == 0
    before = snapshot(job)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match=r"resume: .*run.gsr' was recorded with other settings: "
                                         r"silence_duration: recorded 0.02, now 0.04; "
                                         r"tone_duration: recorded 0.01, now 0.02"):
        GradientSonifier(model, run_dir=job, resume=True, tone_duration=0.02)
    with pytest.raises(ValueError, match=r"resume: .*has voices \['0', '2'\]; this model has "
                                         r"\['0', '2', '4'\]"):
        GradientSonifier(torch.nn.Sequential(*model, torch.nn.ReLU(), torch.nn.Linear(3, 3)),
                         run_dir=job, resume=True)
    with pytest.raises(ValueError, match=r"resume: .*run.wav' is a pcm16 WAV"):
        os.remove(job / "run.gsr")
        (job / "run.wav").write_bytes(_pcm16_wav())
        before = snapshot(job)
        GradientSonifier(model, run_dir=job, resume=True)
    assert snapshot(job) == before
    with pytest.raises(ValueError, match=r"resume=True continues the files of an earlier run"):
        GradientSonifier(model, resume=True)


def _pcm16_wav() -> bytes:
    import io

    buf = io.BytesIO()
    scipy.io.wavfile.write(buf, 44100, np.zeros(100, dtype=np.int16))
    return buf.getvalue()


# -- constructors that fail touch nothing ----------------------------------------------------


class _PrepareFails(Sink):
    def write(self, frames):
        pass

    def prepare(self, sample_rate):
        raise OSError("this sink's device is gone")


@pytest.mark.parametrize("kwargs, exc", [
    ({"record": "no/such/dir/x.gsr"}, ValueError),
    ({"sinks": [object()]}, TypeError),
    ({"sinks": [_PrepareFails()]}, OSError),
    ({"live": "yes"}, TypeError),
    ({"mapping": "cubic"}, ValueError),
    ({"tone_duration": 0.02, "resume": True}, ValueError),
    ({"record": "held.gsr"}, FileInUseError),
    ({"run_dir": "old/run.wav"}, ValueError),
])
def test_a_constructor_that_raises_leaves_the_disk_as_it_was(kwargs, exc):
    model = TinyMLP()
    with GradientSonifier(model, run_dir="old", quiet=True) as son:  # a finished earlier run
        train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), steps=3)
    holder = GradientSonifier(TinyMLP(), wav=None, record="held.gsr", quiet=True)
    try:
        before = snapshot(Path("."))
        with pytest.raises(exc):
            GradientSonifier(model, wav="old/run.wav", **{"record": "old/run.gsr", **kwargs})
        with pytest.raises(exc):
            GradientSonifier(model, **{"run_dir": "old", **kwargs})
        assert snapshot(Path(".")) == before
    finally:
        holder.close()
    for s in kwargs.get("sinks", []):
        if isinstance(s, Sink):
            s.close()


# -- recordings are read defensively ---------------------------------------------------------


@pytest.fixture(scope="module")
def good_recording(tmp_path_factory) -> bytes:
    return small_recording(tmp_path_factory.mktemp("rec") / "r.gsr").read_bytes()


def _check_corrupt(data: bytes, path: Path, capsys) -> None:
    path.write_bytes(data)
    try:
        read_recording(path)
    except RecordingError as e:
        assert str(path) in str(e)
    for argv in (["info", str(path)], ["render", str(path), "-o", str(path) + ".wav", "-q"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 1)
        if code:
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_truncation_or_byte_flip_escapes_as_anything_but_a_recording_error(
        good_recording, tmp_path, capsys, data):
    raw = good_recording
    if data.draw(st.booleans(), label="truncate"):
        corrupt = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        header_end = 12 + int.from_bytes(raw[8:12], "little")
        at = data.draw(st.one_of(st.integers(0, header_end - 1), st.integers(0, len(raw) - 1)),
                       label="at")
        corrupt = raw[:at] + bytes([data.draw(st.integers(0, 255), label="byte")]) + raw[at + 1:]
    _check_corrupt(corrupt, tmp_path / "c.gsr", capsys)


def test_a_control_character_flipped_into_a_settings_key_stays_a_one_line_error(
        good_recording, tmp_path, capsys):
    # found by the fuzz test above: 'o' -> '\' in "spike_factor" makes the JSON escape \r (a CR)
    # in the key; the TypeError's text carried it raw into the CLI's error, two lines long
    assert b'"spike_factor"' in good_recording
    corrupt = good_recording.replace(b'"spike_factor"', b'"spike_fact\\r"', 1)
    _check_corrupt(corrupt, tmp_path / "cr.gsr", capsys)
    with pytest.raises(RecordingError, match=r"'spike_fact\\r', which are not Accents fields "
                                             r"\(spike_factor, collapse_factor"):
        read_recording(tmp_path / "cr.gsr")


def _header(raw: bytes, edit) -> bytes:
    """The recording with its JSON header edited (and its length field rewritten)."""
    import json
    import struct

    n = int.from_bytes(raw[8:12], "little")
    header = json.loads(raw[12:12 + n])
    edit(header)
    body = json.dumps(header).encode()
    return raw[:8] + struct.pack("<I", len(body)) + body + raw[12 + n:]


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw[:6], r"cut short: 6 bytes"),
    (lambda raw: raw[:9], r"cut short: 9 bytes"),
    (lambda raw: raw[:40], r"cut short inside its header"),
    (lambda raw: _header(raw, lambda h: h.update(settings=None)),
     r"header has settings 'None', not an object"),
    (lambda raw: _header(raw, lambda h: h.pop("layer_names")),
     r"voice list \('layer_names'\) is not a list of names"),
    (lambda raw: _header(raw, lambda h: h.update(layer_names=[])),
     r"voice list \('layer_names'\) is empty"),
    (lambda raw: _header(raw, lambda h: h["settings"].update(tone_duration=1e9)),
     r"settings are not usable"),
    (lambda raw: _header(raw, lambda h: h["settings"]["mapping"].update(kind="lox")),
     r"settings are not usable"),
    (lambda raw: _header(raw, lambda h: h["settings"]["mapping"].update(gain=2)),
     r"settings are not usable"),
    (lambda raw: _header(raw, lambda h: h["settings"].update(sample_rate=10)),
     r"settings are not usable"),
    (lambda raw: raw[:12] + b"\xff" + raw[13:], r"header is not valid JSON"),
    (lambda raw: b"RIFF" + raw[4:], r"not a gradsonic recording \(bad magic\)"),
])
def test_known_corruptions_are_one_clear_error(good_recording, edit, message, capsys):
    Path("bad.gsr").write_bytes(edit(good_recording))
    with pytest.raises(RecordingError, match=message):
        read_recording("bad.gsr")
    for cmd, out in ((["info"], []), (["render"], ["-o", "x.wav"]), (["plot"], ["-o", "x.png"])):
        argv = cmd + ["bad.gsr"] + out
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: 'bad.gsr'") and len(err.strip().splitlines()) == 1


def test_resuming_a_wav_that_rolled_over_past_4_gib_is_refused_untouched(tmp_path):
    model = TinyMLP()
    with GradientSonifier(model, run_dir=tmp_path, quiet=True) as son:
        train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), steps=2)
    (tmp_path / "run-002.wav").write_bytes((tmp_path / "run.wav").read_bytes())
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"was continued in .*run-002.wav.*resume with wav=None"):
        GradientSonifier(model, run_dir=tmp_path, resume=True)
    assert snapshot(tmp_path) == before
    with GradientSonifier(model, run_dir=tmp_path, wav=None, record=tmp_path / "run.gsr",
                          resume=True, quiet=True) as son:
        assert son.steps == 2


def test_parts_go_beside_their_file_even_after_the_program_changes_directory(tmp_path,
                                                                              monkeypatch):
    model = TinyMLP()
    model.head.requires_grad_(False)
    son = GradientSonifier(model, wav="r.wav", record="r.gsr", quiet=True)
    opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    train_steps(model, opt, steps=2)
    son.flush()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    model.head.requires_grad_(True)  # a new voice: the recording goes on in r-002.gsr
    train_steps(model, opt, steps=2)
    son.close()
    assert (tmp_path / "r-002.gsr").exists() and not any((tmp_path / "elsewhere").iterdir())
    assert read_recording(tmp_path / "r.gsr").steps.tolist() == [0, 1, 2, 3]


def test_resume_with_every_nth_step_sounded_continues_where_the_recording_ends(tmp_path):
    def run(run_dir, total):
        torch.manual_seed(0)
        model = TinyMLP()
        with GradientSonifier(model, run_dir=run_dir, resume=True, every=3, quiet=True) as son:
            opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.0))
            start = son.steps
            for step in range(start, total):
                g = torch.Generator().manual_seed(step)
                opt.zero_grad()
                model(torch.randn(4, 8, generator=g)).pow(2).mean().backward()
                opt.step()
        return start

    assert run(tmp_path / "job", 20) == 0
    assert run(tmp_path / "job", 32) == 20  # not 7, the number of sounded steps
    assert run(tmp_path / "straight", 32) == 0
    rec = read_recording(tmp_path / "job" / "run.gsr")
    assert rec.steps.tolist() == list(range(32))
    _, audio = scipy.io.wavfile.read(tmp_path / "job" / "run.wav")
    _, straight = scipy.io.wavfile.read(tmp_path / "straight" / "run.wav")
    assert audio.size == straight.size == 11 * 5 * 441  # steps 0, 3, ..., 30
    np.testing.assert_array_equal(audio, straight)


def test_a_run_dir_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"run_dir=.*afile/sub' cannot be created"):
        GradientSonifier(TinyMLP(), run_dir=tmp_path / "afile" / "sub")

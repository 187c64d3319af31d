"""The seed experiment on real MNIST, the demo command and the examples."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.io.wavfile
import soundfile
import torch
import torch.nn.functional as F

from gradsonic import GradientSonifier
from gradsonic.cli import main
from gradsonic.demo import PRESETS, SeedCNN, load_mnist, train_preset
from gradsonic.demo.mnist import EMBEDDED_IMAGES, read_idx

from .conftest import REPO

SEED_STEP = 4 * 441 + 2 * 441


def test_seed_cnn_norms_on_real_mnist_equal_direct_per_layer_norms(mnist_slice):
    x, y = mnist_slice
    torch.manual_seed(1)
    model = SeedCNN()
    records = []
    direct = []
    with GradientSonifier(model, layers=model.ordered_layers(), wav="seed.wav", mapping="seed",
                          on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5))
        for i in range(8):
            opt.zero_grad()
            F.nll_loss(model(x[i * 10:(i + 1) * 10]), y[i * 10:(i + 1) * 10]).backward()
            direct.append([layer.weight.grad.norm().item() for layer in model.ordered_layers()])
            opt.step()
    assert son.layer_names == ("conv1", "conv2", "fc1", "fc2")
    np.testing.assert_allclose(np.stack([r.norms for r in records]),
                               np.array(direct, dtype=np.float32), rtol=1e-5)
    rate, data = scipy.io.wavfile.read("seed.wav")
    assert rate == 44100 and data.dtype == np.float32 and data.shape == (8 * SEED_STEP,)


def test_low_learning_rate_preset_rises_in_pitch(mnist_dir):
    x, y = load_mnist(mnist_dir)
    result = train_preset("sgd-lr0.01", x, y, steps=200, wav="rise.wav")
    first, last = np.median(result.norms[:50], axis=0), np.median(result.norms[-50:], axis=0)
    assert np.all(last > first * 1.3), (first, last)  # every layer's tone is higher at the end
    assert result.alarm_steps == 0


def test_nan_preset_plays_alarms_and_only_finite_samples():
    x, y = load_mnist(None)  # the embedded subset; its documented seed diverges to NaN
    preset = PRESETS["sgd-lr1.0-bs256"]
    result = train_preset(preset, x, y, steps=25, seed=preset.seed_for(embedded=True),
                          wav="nan.wav")
    finite_rows = np.isfinite(result.norms).all(axis=1)
    first_bad = int(np.argmin(finite_rows))
    assert not finite_rows.all() and result.alarm_steps == 25 - first_bad
    assert np.nanmax(result.norms[:first_bad]) > 1e6  # it climbed by orders of magnitude first
    data, _ = soundfile.read("nan.wav", dtype="float32")
    assert data.shape == (25 * SEED_STEP,) and np.all(np.isfinite(data))


def test_embedded_subset_is_real_mnist(mnist_dir):
    x, y = load_mnist(None)
    assert x.shape == (EMBEDDED_IMAGES, 1, 28, 28) and y.shape == (EMBEDDED_IMAGES,)
    assert set(y.tolist()) == set(range(10))
    if mnist_dir is not None:
        full = read_idx(mnist_dir / "train-images-idx3-ubyte.gz")[:EMBEDDED_IMAGES]
        ours = read_idx(REPO / "src/gradsonic/demo/data/train-images-idx3-ubyte.gz")
        np.testing.assert_array_equal(full, ours)


def test_demo_command_writes_one_wav_per_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--preset", "sgd-lr0.01", "adam-lr0.01", "--steps", "6",
                 "--out", str(out), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("sgd-lr0.01", "adam-lr0.01"):
        info = soundfile.info(str(out / f"{name}.wav"))
        assert info.frames == 6 * SEED_STEP and info.samplerate == 44100
        assert str(out / f"{name}.wav") in printed
    assert printed.count(f"({6 * SEED_STEP / 44100:.1f} s of audio; trained in ") == 2
    assert "listen for" in printed


def test_demo_reads_a_data_folder(tmp_path, mnist_dir, capsys):
    if mnist_dir is None:  # no copy beside the repo: a folder holding the embedded IDX files
        mnist_dir = tmp_path / "mnist"
        shutil.copytree(REPO / "src/gradsonic/demo/data", mnist_dir)
    n_images = len(read_idx(mnist_dir / "train-labels-idx1-ubyte.gz"))
    code = main(["demo", "--preset", "sgd-lr0.1", "--steps", "3", "--data", str(mnist_dir),
                 "--out", str(tmp_path), "--format", "pcm16", "-q"])
    assert code == 0 and f"({n_images} images)" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, data = scipy.io.wavfile.read(tmp_path / "sgd-lr0.1.wav")
    assert data.dtype == np.int16 and data.shape == (3 * SEED_STEP,)


@pytest.mark.parametrize("argv, message", [
    (["demo", "--preset", "sgd-lr9"], "error: unknown preset 'sgd-lr9'"),
    (["demo", "--data", "/no/such/folder"], "error: MNIST folder '/no/such/folder' does not exist"),
])
def test_demo_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == message or err.startswith(message)
    assert len(err.strip().splitlines()) == 1


def test_demo_rejects_non_positive_steps(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--steps", "0"])
    assert info.value.code == 2 and "--steps must be >= 1, not 0" in capsys.readouterr().err


@pytest.mark.parametrize("script, args, wav", [
    ("mnist_cnn.py", ["--preset", "sgd-lr0.01", "--steps", "4"], "sgd-lr0.01.wav"),
    ("plain_loop.py", ["--steps", "20", "--wav", "plain.wav"], "plain.wav"),
    ("lightning_example.py", ["--steps", "10", "--wav", "pl.wav"], "pl.wav"),
    ("hf_trainer_example.py", ["--steps", "4", "--wav", "hf.wav"], "hf.wav"),
])
def test_examples_run(script, args, wav, tmp_path):
    path = REPO / "examples" / script
    help_text = subprocess.run([sys.executable, str(path), "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "usage:" in help_text
    subprocess.run([sys.executable, str(path), *args], cwd=tmp_path, check=True, timeout=300)
    assert soundfile.info(str(tmp_path / wav)).frames > 0


def test_import_gradsonic_pulls_no_optional_dependency():
    code = ("import sys, gradsonic; bad = [m for m in ('torchvision', 'pyaudio', 'matplotlib', "
            "'lightning', 'transformers', 'scipy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_benchmark_suite_smoke_run():
    """Proves the benchmark scripts run (a few seconds); the numbers live in RESULTS.md."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for heading in ("| gradsonic, 64 steps per render |", "| gradsonic |", "| WAV sink",
                    "| serve, 10 clients |", "step-to-page latency", "| wav+mlflow |",
                    "TensorBoard event file size", "| foreach+stack |"):
        assert heading in proc.stdout


def test_docs_build_without_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "presets.html").read_text().count("<audio") == 10
    assert (tmp_path / "site" / "assets" / "sgd-lr1.0-bs256.ogg").stat().st_size > 10_000

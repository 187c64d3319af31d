"""TensorBoard, W&B (offline) and MLflow (local store) sinks, read back with each tool's own
reader; ``gradsonic export``; Lightning's and the HF Trainer's loggers picking the sound up; and
TensorBoard's Audio dashboard in a real Chromium."""

from __future__ import annotations

import glob
import io
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from gradsonic import GradientSonifier, MLflowSink, TensorBoardSink, WandbSink
from gradsonic.cli import main
from gradsonic.recording import read_recording
from gradsonic.render import frames

from .fixtures.browser import CHROMIUM, require_browser
from .fixtures.models import TinyMLP, Tokens, tiny_gpt2


def event_accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(path), size_guidance={"scalars": 0, "audio": 0,
                                                      "tensors": 0}).Reload()


def train(sinks, steps=300, layout="sequence", every=1, run_dir="run"):
    """A real run with a spike (step 120) and a NaN (step 280: the weights are NaN from there on)
    in it; returns its recording."""
    torch.manual_seed(0)
    model = TinyMLP()
    with GradientSonifier(model, run_dir=run_dir, sinks=sinks, layout=layout, every=every,
                          quiet=True) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        for i in range(steps):
            opt.zero_grad()
            model(torch.randn(8, 8)).pow(2).mean().backward()
            if i == 120:
                model.fc2.weight.grad.mul_(50.0)
            if i == 280:
                model.head.weight.grad[0, 0] = float("nan")
            opt.step()
    return read_recording(Path(run_dir) / "run.gsr")


def expected_counts(rec):
    alarms = np.where(rec.skipped, rec.norms.shape[1], rec.nonfinite.sum(axis=1))
    return alarms, (rec.accents > 0).sum(axis=1)


def rendered(rec, first, last):
    """gradsonic's own samples for steps first..last (step numbers = rows here)."""
    return np.concatenate(list(frames(rec, steps=slice(first, last + 1))))


def check_scalars(rec, series):
    """``series[tag] -> {step: value}`` equals the recording, step by step."""
    alarms, accents = expected_counts(rec)
    assert rec.accents.any() and rec.nonfinite.any()
    for j, name in enumerate(rec.layer_names):
        got = series[f"gradsonic/norm/{name}"]
        ok = np.isfinite(rec.norms[:, j]) & ~rec.missing[:, j]
        assert sorted(got) == rec.steps[ok].tolist()  # no point for a NaN step
        np.testing.assert_array_equal([got[s] for s in rec.steps[ok]], rec.norms[ok, j])
    assert series["gradsonic/alarms"] == dict(zip(rec.steps.tolist(), alarms.tolist()))
    assert series["gradsonic/accents"] == dict(zip(rec.steps.tolist(), accents.tolist()))


def check_clips(rec, clips, tile=False):
    """``clips`` = [(step, samples)]: each the exact sound of the steps before it; ``tile``: they
    hold the whole run back to back."""
    assert clips
    at = 0
    for step, samples in clips:
        per_step = len(rendered(rec, step, step))
        n = len(samples) // per_step
        assert n * per_step == len(samples)
        np.testing.assert_array_equal(samples, rendered(rec, step - n + 1, step))
        if tile:
            assert step - n + 1 == at
            at = step + 1
    if tile:
        assert at == len(rec.steps)


# ---- TensorBoard -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["sequence", "chord"])
def test_tensorboard_scalars_and_clips_read_back_exactly(tmp_path, layout):
    tb = TensorBoardSink(tmp_path / "tb", clip_steps=100)
    rec = train([tb], layout=layout)
    ea = event_accumulator(tmp_path / "tb")
    series = {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}
    check_scalars(rec, series)
    audio = ea.Audio("gradsonic/audio")
    assert [a.step for a in audio] == [99, 199, 299]
    clips = []
    for a in audio:
        samples, rate = soundfile.read(io.BytesIO(a.encoded_audio_string), dtype="float32")
        assert rate == a.sample_rate == 44100 and a.content_type == "audio/wav"
        assert samples.ndim == (1 if layout == "sequence" else 2)
        clips.append((a.step, samples))
    check_clips(rec, clips, tile=True)


def test_clip_cadence_by_the_training_clock(tmp_path):
    """Default cadence: the first clip as soon as 10 s of sound exist, then every 300 s of the
    training's own clock (none in this short run), and the rest at close()."""
    tb = TensorBoardSink(tmp_path / "tb")
    rec = train([tb], steps=400)
    audio = event_accumulator(tmp_path / "tb").Audio("gradsonic/audio")
    per_step = len(rendered(rec, 0, 0))
    first = -(-441000 // per_step) - 1  # the step whose sound completes 10 s
    assert [a.step for a in audio] == [first, 399]
    check_clips(rec, [(a.step, soundfile.read(io.BytesIO(a.encoded_audio_string),
                                              dtype="float32")[0]) for a in audio])


def test_tensorboard_records_checksummed_in_c_read_back_by_the_pure_python_reader(tmp_path):
    """With google-crc32c installed the event writer checksums in C (a 10 s clip: ~200 ms of
    pure Python, holding the interpreter lock, before); TensorBoard's own pure-Python reader, which
    verifies every record's two CRCs, reads every clip and scalar back."""
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as stub
    from tensorboard.summary.writer import record_writer

    from gradsonic.sinks.tensorboard import fast_checksums

    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 8, 1000, 65537):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert fast_checksums() and record_writer.masked_crc32c is not stub.masked_crc32c
        assert record_writer.masked_crc32c(data) == stub.masked_crc32c(data), n
    train([TensorBoardSink(tmp_path / "tb", clip_steps=100)], steps=200)
    [path] = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    reader = stub.PyRecordReader_New(path.encode())
    records = 0
    while True:
        try:
            reader.GetNext()  # DataLossError on a wrong CRC
        except stub.errors.OutOfRangeError:
            break
        records += 1
    assert records == 1 + 200 + 2  # the file version, one event per step, two clips


def test_tensorboard_sink_on_an_existing_writer_and_bad_targets(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "mine")
    writer.add_scalar("loss", 1.0, 0)
    train([TensorBoardSink(writer, clip_steps=1000, prefix="sound")], steps=20)
    writer.add_scalar("loss", 0.5, 20)  # still open: the sink only flushed it
    writer.close()
    tags = event_accumulator(tmp_path / "mine").Tags()
    assert "loss" in tags["scalars"] and "sound/norm/fc1" in tags["scalars"]
    assert tags["audio"] == ["sound/audio"]
    with pytest.raises(TypeError, match="log folder or a torch SummaryWriter"):
        TensorBoardSink(42)
    with pytest.raises(ValueError, match="clip_steps"):
        TensorBoardSink(tmp_path, clip_steps=0)
    with pytest.raises(ValueError, match="prefix"):
        TensorBoardSink(tmp_path, prefix="")


def test_export_to_tensorboard_equals_the_live_sink_and_tiles_the_run(tmp_path, capsys):
    live = TensorBoardSink(tmp_path / "live", clip_steps=250)
    rec = train([live])
    assert main(["export", str(rec.path), "--tensorboard", str(tmp_path / "exported"),
                 "-q"]) == 0
    assert "2 clips" in capsys.readouterr().out
    a, b = event_accumulator(tmp_path / "live"), event_accumulator(tmp_path / "exported")
    for tag in a.Tags()["scalars"]:
        assert ([(e.step, e.value) for e in a.Scalars(tag)]
                == [(e.step, e.value) for e in b.Scalars(tag)])
    clips = [(x.step, soundfile.read(io.BytesIO(x.encoded_audio_string), dtype="float32")[0])
             for x in b.Audio("gradsonic/audio")]
    check_clips(rec, clips, tile=True)  # back to back: the whole run is on the dashboard
    assert main(["export", str(rec.path)]) == 1
    assert "at least one destination" in capsys.readouterr().err


def test_export_follows_every_n(tmp_path):
    rec = train([], every=3)
    # a run folder does as well as its run.gsr
    assert main(["export", str(rec.path.parent), "--tensorboard", str(tmp_path / "tb"),
                 "-q"]) == 0
    ea = event_accumulator(tmp_path / "tb")
    finite = int(np.isfinite(rec.norms[:, 0]).sum())
    assert 250 < finite < 300
    assert len(ea.Scalars("gradsonic/norm/fc1")) == finite  # every step's (finite) norm
    audio = ea.Audio("gradsonic/audio")
    heard = set(rec.steps[rec.sounded()].tolist())  # every 3rd step, and each alarm
    assert all(a.step in heard for a in audio)
    assert any(s % 3 for s in heard)  # this run's NaN steps sound whatever their number
    got = np.concatenate([soundfile.read(io.BytesIO(a.encoded_audio_string),
                                         dtype="float32")[0] for a in audio])
    np.testing.assert_array_equal(got, np.concatenate(list(frames(rec))))


# ---- W&B offline --------------------------------------------------------------------------------


def wandb_history(run_dir):
    """Every history row of an offline run, read from its .wandb file (a LevelDB-style log of
    ``Record`` protos) without a server."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = glob.glob(str(Path(run_dir) / "run-*.wandb"))[0]
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, rows = 7, b"", {}
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (2, 3):
            continue
        rec = pb.Record()
        rec.ParseFromString(buf)
        if rec.WhichOneof("record_type") == "history":
            row: dict = {}
            for item in rec.history.item:
                if item.key:
                    row[item.key] = json.loads(item.value_json)
                else:
                    d = row
                    for k in item.nested_key[:-1]:
                        d = d.setdefault(k, {})
                    d[item.nested_key[-1]] = json.loads(item.value_json)
            rows[row["_step"]] = row
    return rows


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    import wandb

    yield wandb
    wandb.teardown()


def test_wandb_offline_history_and_audio_read_back_exactly(tmp_path, wandb_offline):
    run = wandb_offline.init(project="gradsonic-test")
    rec = train([WandbSink(clip_steps=100)])
    run_dir = Path(run.dir).parent
    run.finish()
    wandb_offline.teardown()  # wandb-core has written the whole file once it has exited
    rows = wandb_history(run_dir)
    series: dict = {}
    for step, row in rows.items():
        assert row.get("gradsonic/step", step) == step  # the history row is the optimizer step
        for k, v in row.items():
            if k.startswith("gradsonic/") and k not in ("gradsonic/audio", "gradsonic/step"):
                series.setdefault(k, {})[step] = v
    check_scalars(rec, series)
    clips = []
    for step, row in sorted(rows.items()):
        if "gradsonic/audio" in row:
            meta = row["gradsonic/audio"]
            samples, _ = soundfile.read(run_dir / "files" / meta["path"], dtype="float32")
            first = step - len(samples) // len(rendered(rec, step, step)) + 1
            assert meta["caption"] == f"steps {first}-{step}"
            clips.append((step, samples))
    assert [s for s, _ in clips] == [99, 199, 299]
    check_clips(rec, clips, tile=True)


def test_wandb_sink_without_a_run_is_a_clear_error_and_writes_nothing(tmp_path, wandb_offline):
    with pytest.raises(ValueError, match="wandb.init"):
        GradientSonifier(TinyMLP(), run_dir=tmp_path / "run", sinks=[WandbSink()])
    assert not (tmp_path / "run").exists()  # checked before any file was made
    with pytest.raises(ValueError, match="rows"):
        WandbSink(rows="mine")


def _log_twice_per_step(wandb_offline, sink, explicit):
    """Another logger in the same run, twice per optimizer step: with ``step=`` (explicit) or
    without; returns (its rows, gradsonic's rows)."""
    run = wandb_offline.init(project="gradsonic-test")
    torch.manual_seed(0)
    model = TinyMLP()
    with GradientSonifier(model, run_dir="run", sinks=[sink], quiet=True) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
        for i in range(120):
            for half in range(2):
                opt.zero_grad()
                loss = model(torch.randn(8, 8)).pow(2).mean()
                if explicit:
                    run.log({"mine": float(i)}, step=i)
                else:
                    run.log({"mine": float(2 * i + half)})
            loss.backward()
            opt.step()
            time.sleep(0.002)
    run_dir = Path(run.dir).parent
    run.finish()
    wandb_offline.teardown()
    rows = wandb_history(run_dir)
    mine = [r["mine"] for _, r in sorted(rows.items()) if "mine" in r]
    ours = [r["gradsonic/step"] for _, r in sorted(rows.items()) if "gradsonic/alarms" in r]
    return mine, ours


def test_wandb_own_rows_keep_every_step_beside_a_logger_without_step(wandb_offline):
    mine, ours = _log_twice_per_step(wandb_offline, WandbSink(rows="own"), explicit=False)
    assert ours == list(range(120))  # every optimizer step, in a row of its own
    assert mine == [float(i) for i in range(240)]  # and every one of theirs


def test_wandb_shared_rows_never_drop_a_logger_with_step(wandb_offline, capsys):
    sink = WandbSink()  # rows="shared"
    mine, ours = _log_twice_per_step(wandb_offline, sink, explicit=True)
    assert sorted(set(mine)) == [float(i) for i in range(120)]  # every one of theirs is there
    assert ours == sorted(ours) and len(set(ours)) == len(ours)  # ours: increasing, no clobber
    assert len(ours) + sink.skipped_steps >= 100
    if sink.skipped_steps:
        assert "one value per W&B row" in capsys.readouterr().err


# ---- MLflow (local store) -----------------------------------------------------------------------


@pytest.fixture
def mlflow_local(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3: file store on request
    import mlflow

    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    yield mlflow
    mlflow.set_tracking_uri(None)


def mlflow_read(mlflow, run_id, rec):
    client = mlflow.tracking.MlflowClient()
    series = {}
    for tag in [f"gradsonic/norm/{n}" for n in rec.layer_names] + ["gradsonic/alarms",
                                                                   "gradsonic/accents"]:
        series[tag] = {m.step: m.value for m in client.get_metric_history(run_id, tag)}
    clips = []
    root = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    for art in client.list_artifacts(run_id, "gradsonic/audio"):
        step = int(Path(art.path).stem.split("-")[1])
        clips.append((step, soundfile.read(root / art.path, dtype="float32")[0]))
    return series, sorted(clips, key=lambda c: c[0])


def test_mlflow_metrics_and_artifacts_read_back_exactly(tmp_path, mlflow_local):
    with mlflow_local.start_run() as run:
        rec = train([MLflowSink(clip_steps=100)])
    series, clips = mlflow_read(mlflow_local, run.info.run_id, rec)
    series = {k: {s: (int(v) if k.endswith(("alarms", "accents")) else np.float32(v))
                  for s, v in d.items()} for k, d in series.items()}
    check_scalars(rec, series)
    assert [s for s, _ in clips] == [99, 199, 299]
    check_clips(rec, clips, tile=True)


def test_export_to_wandb_and_mlflow(tmp_path, wandb_offline, mlflow_local):
    rec = train([])
    uri = mlflow_local.get_tracking_uri()
    assert main(["export", str(rec.path), "--wandb", "gradsonic-export", "--mlflow", uri,
                 "-q"]) == 0
    wandb_offline.teardown()
    rows = wandb_history(glob.glob(str(tmp_path / "wandb" / "offline-run-*"))[0])
    assert len([r for r in rows.values() if "gradsonic/norm/fc1" in r]) == int(
        np.isfinite(rec.norms[:, 0]).sum())
    runs = mlflow_local.search_runs(search_all_experiments=True, output_format="list")
    series, clips = mlflow_read(mlflow_local, runs[0].info.run_id, rec)
    assert len(series["gradsonic/norm/fc2"]) == int(np.isfinite(rec.norms[:, 1]).sum())
    check_clips(rec, clips, tile=True)


# ---- trainers ----------------------------------------------------------------------------------


def test_lightning_tensorboard_logger_gets_the_sound_in_its_version_folder(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from gradsonic.lightning import SonifierCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = TinyMLP()

        def training_step(self, batch, _):
            loss = ((self.net(batch[0]) - batch[1]) ** 2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 8), torch.randn(256, 3))
    logger = TensorBoardLogger(tmp_path / "lightning_logs", name="exp")
    trainer = pl.Trainer(max_steps=60, accelerator="cpu", logger=logger, log_every_n_steps=10,
                         callbacks=[SonifierCallback(run_dir=tmp_path / "run", quiet=True)],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    assert Path(logger.log_dir).name == "version_0"
    ea = event_accumulator(logger.log_dir)
    assert "loss" in ea.Tags()["scalars"]
    rec = read_recording(tmp_path / "run" / "run.gsr")
    assert rec.layer_names[0] == "net.fc1"
    norms = ea.Scalars("gradsonic/norm/net.fc1")
    assert [e.step for e in norms] == list(range(60))  # Lightning's global_step
    np.testing.assert_array_equal([e.value for e in norms], rec.norms[:, 0])
    assert [e.step for e in ea.Scalars("loss")][:2] == [9, 19]  # the same step axis
    audio = ea.Audio("gradsonic/audio")
    assert audio and audio[-1].step == 59


def test_lightning_opt_out(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from gradsonic.lightning import logger_sinks

    logger = TensorBoardLogger(tmp_path)
    assert [type(s).__name__ for s in logger_sinks([logger])] == ["TensorBoardSink"]


def test_hf_trainer_report_to_tensorboard_gets_the_sound(tmp_path):
    from transformers import Trainer, TrainingArguments

    from gradsonic.transformers import SonifierCallback

    model = tiny_gpt2()

    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=12,
                             per_device_train_batch_size=4, report_to=["tensorboard"],
                             save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_steps=4)
    sonic = SonifierCallback(run_dir=tmp_path / "run", quiet=True)
    sonic_sinks = []
    original = sonic.on_train_begin

    def on_train_begin(*a, **kw):
        original(*a, **kw)
        sonic_sinks.extend(sonic.sonifier.sinks)

    sonic.on_train_begin = on_train_begin
    Trainer(model=model, args=args, train_dataset=Tokens(64), callbacks=[sonic]).train()
    folders = {Path(p).parent for p in glob.glob(str(tmp_path / "out" / "**" / "events.*"),
                                                 recursive=True)}
    assert len(folders) == 1  # the TensorBoardCallback's own folder
    ea = event_accumulator(folders.pop())
    tags = ea.Tags()["scalars"]
    assert "train/loss" in tags
    norm_tags = [t for t in tags if t.startswith("gradsonic/norm/")]
    # the Trainer's global_step counts from 1: gradsonic's step 0 is logged at 1
    # every step once, at HF's 1-based global step (the order across event files depends on when
    # the Trainer closed its writer against the worker's last block: not asserted)
    assert norm_tags and sorted(e.step for e in ea.Scalars(norm_tags[0])) == list(range(1, 13))
    assert [e.step for e in ea.Scalars("train/loss")] == [4, 8, 12]
    assert ea.Audio("gradsonic/audio")[-1].step == 12
    # the callback closed its writer before gradsonic was done: the file gradsonic reopened for
    # its last steps is closed too (nothing left open, nothing lost)
    sink = next(s for s in sonic_sinks if type(s).__name__ == "TensorBoardSink")
    assert sink.closed and sink.writer.all_writers is None


# ---- TensorBoard's Audio dashboard in a real browser --------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_audio_dashboard_in_chromium(tmp_path):
    sync_playwright = require_browser()
    rec = train([TensorBoardSink(tmp_path / "logs" / "job", clip_steps=150)])
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir",
                             str(tmp_path / "logs"), "--port", str(port), "--host", "127.0.0.1",
                             "--samples_per_plugin", "audio=1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                tags = json.load(urllib.request.urlopen(f"{base}/data/plugin/audio/tags",
                                                        timeout=5))
                if tags.get("job"):
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.skip(f"TensorBoard cannot start here: {proc.stderr.read()[-500:]}")
            assert time.monotonic() < deadline, "TensorBoard did not load the run in 90 s"
            time.sleep(0.5)
        assert "gradsonic/audio" in tags["job"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{base}/#audio")
            page.get_by_text("gradsonic/audio").first.wait_for(timeout=30000)
            player = page.locator("tf-audio-loader audio").first  # (in shadow roots)
            player.wait_for(timeout=30000)
            src = player.get_attribute("src")
            ready = page.evaluate("""async (src) => {
                const a = new Audio(src);
                await new Promise((ok, bad) => { a.oncanplaythrough = ok; a.onerror = bad; });
                return [a.duration, a.readyState];
            }""", src)
            browser.close()
        wav = urllib.request.urlopen(f"{base}/{src}", timeout=10).read()
        samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        assert ready[1] >= 3 and abs(ready[0] - len(samples) / rate) < 0.05
        clips = event_accumulator(tmp_path / "logs" / "job").Audio("gradsonic/audio")
        assert [a.step for a in clips] == [149, 299]
        # the dashboard opens on the latest clip: the run's last steps, sample for sample
        np.testing.assert_array_equal(samples, rendered(rec, 150, 299))
    finally:
        proc.kill()
        proc.wait()


def test_lightning_wandb_and_mlflow_loggers_map_to_their_runs(tmp_path, wandb_offline,
                                                               mlflow_local):
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    from gradsonic.lightning import logger_sinks

    wb = WandbLogger(project="gradsonic-test", save_dir=str(tmp_path))
    ml = MLFlowLogger(experiment_name="gradsonic-test",
                      tracking_uri=mlflow_local.get_tracking_uri())
    sinks = logger_sinks([wb, ml])
    assert [type(s).__name__ for s in sinks] == ["WandbSink", "MLflowSink"]
    assert sinks[0]._given is wb.experiment
    assert sinks[1].run_id == ml.run_id and sinks[1].client is ml.experiment
    rec = train(sinks, steps=30)
    wb.experiment.finish()
    series, _ = mlflow_read(mlflow_local, ml.run_id, rec)
    assert sorted(series["gradsonic/norm/fc1"]) == list(range(30))

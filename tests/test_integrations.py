"""Lightning, Hugging Face Trainer and torch.distributed (DDP with torchrun), for real on CPU."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from .conftest import REPO
from .fixtures.models import TinyMLP, Tokens, tiny_gpt2

TONE = 441


@pytest.mark.parametrize("optimizer, clip, accumulate", [
    ("sgd", None, 2), ("sgd", 0.05, 2), ("sgd", 0.05, 1), ("lbfgs", None, 1)])
def test_lightning_callback_hears_each_optimizer_step_as_applied(optimizer, clip, accumulate):
    """Post-clip norms, one sound per optimizer step (accumulation, LBFGS's many closures)."""
    import lightning.pytorch as pl

    from gradsonic.lightning import SonifierCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = TinyMLP()
            self.applied = {}  # global step -> norms after clipping, at the first closure call

        def training_step(self, batch, _):
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                        gradient_clip_algorithm=None):
            super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                gradient_clip_algorithm)
            self.applied.setdefault(self.trainer.global_step, [
                m.weight.grad.norm().item() for m in (self.net.fc1, self.net.fc2, self.net.head)])

        def configure_optimizers(self):
            if optimizer == "lbfgs":
                return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=4)
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 3))
    records = []
    sonic = SonifierCallback(wav="lightning.wav", on_step=records.append)
    module = Module()
    trainer = pl.Trainer(max_steps=6, accumulate_grad_batches=accumulate, accelerator="cpu",
                         gradient_clip_val=clip, callbacks=[sonic], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert sonic.sonifier is None  # closed at fit end
    applied = [module.applied[k] for k in sorted(module.applied)]
    assert len(records) == len(applied) == 6  # one sound per optimizer step
    assert records[0].layer_names == ("net.fc1", "net.fc2", "net.head")
    np.testing.assert_allclose(np.stack([r.norms for r in records]), applied, rtol=1e-5)
    if clip is not None:  # clipping happened, and what is heard is the clipped gradient
        assert max(np.linalg.norm(r.norms) for r in records) <= clip * 1.0001
    assert soundfile.info("lightning.wav").frames == 6 * 5 * TONE


def test_lightning_callback_closes_the_wav_when_training_raises():
    import lightning.pytorch as pl

    from gradsonic.lightning import SonifierCallback

    class Exploding(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, i):
            if i == 3:
                raise RuntimeError("bad batch")
            return self.net(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(32, 4))
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SonifierCallback(wav="raised.wav")])
    with pytest.raises(RuntimeError, match="bad batch"):
        trainer.fit(Exploding(), torch.utils.data.DataLoader(data, batch_size=4))
    assert soundfile.info("raised.wav").frames == 3 * 3 * TONE


def test_transformers_callback_on_a_tiny_gpt2_built_from_a_config(tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from gradsonic.transformers import SonifierCallback

    model = tiny_gpt2()

    class Probe(TrainerCallback):
        def __init__(self):
            self.norms = []

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.norms.append([model.transformer.h[0].mlp.c_fc.weight.grad.norm().item()])

    records = []
    probe = Probe()
    sonic = SonifierCallback(wav=str(tmp_path / "hf.wav"), layers=["transformer.h.*.mlp.c_fc"],
                             on_step=records.append)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4,
                             per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[probe, sonic]).train()
    assert len(records) == len(probe.norms) == 4
    assert records[0].layer_names == ("transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc")
    np.testing.assert_allclose(np.stack([r.norms[:1] for r in records]), probe.norms, rtol=1e-5)
    assert soundfile.info(str(tmp_path / "hf.wav")).frames == 4 * 4 * TONE


def torchrun(script, *args, cwd) -> subprocess.CompletedProcess:
    """Two gloo processes; through tests/torchrun_child.py, which skips torch's flaky teardown."""
    launcher = shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run"
    cmd = [*launcher.split(), "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "torchrun_child.py"), str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def single_process_norms(steps: int) -> list[list[float]]:
    """The distributed examples' training on one process with the whole global batch."""
    sys.path.insert(0, str(REPO / "examples"))
    try:
        example = importlib.import_module("ddp_torchrun")
    finally:
        sys.path.pop(0)
    model = example.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    norms = []
    for step in range(steps):
        x, y = example.global_batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        norms.append([m.weight.grad.norm().item() for m in model if isinstance(m, nn.Linear)])
        opt.step()
    return norms


def test_ddp_under_torchrun_rank_zero_alone_sounds_the_single_process_norms(tmp_path):
    proc = torchrun(REPO / "examples" / "ddp_torchrun.py", "--out", str(tmp_path / "ddp"),
                    "--steps", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0/2: sound and files" in proc.stdout and "rank 1/2: silent" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["ddp.wav", "norms.npy"]
    assert soundfile.info(str(tmp_path / "ddp" / "ddp.wav")).frames == 4 * 5 * TONE
    heard = np.load(tmp_path / "ddp" / "norms.npy")
    np.testing.assert_allclose(heard, single_process_norms(4), rtol=1e-5)


def test_silent_rank_does_nothing(monkeypatch):
    import gradsonic.sonifier as sonifier_module
    from gradsonic import GradientSonifier

    monkeypatch.setattr(sonifier_module, "_process_rank", lambda: 1)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientSonifier(model, wav="never.wav") as son:
        assert not son.active and son.wrap(opt) is opt
        assert len(opt._optimizer_step_pre_hooks) == 0
        son.step()
        son.flush()
    import os
    assert not os.path.exists("never.wav")
    with GradientSonifier(model, wav="mine.wav", rank=1) as son:  # this rank was chosen
        assert son.active


def test_fsdp2_sharded_norms_equal_an_unsharded_run(tmp_path):
    proc = torchrun(REPO / "tests" / "recipes_child.py", "fsdp2", str(tmp_path), "4",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: sound" in proc.stdout and "rank 1: silent" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".wav", ".npy")) == [
        "norms.npy", "run.wav"]
    heard = np.load(tmp_path / "norms.npy")
    np.testing.assert_allclose(heard, single_process_norms(4), rtol=1e-5)

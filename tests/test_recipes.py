"""The recipes big training uses, each against the gradient the optimizer applies.

Fused optimizers under a GradScaler, compiled optimizer steps, sharding (HSDP, FSDP1), wrappers
and hooks that change gradients, alarms outside the voices, norms beyond float32, unfreezing,
several optimizers, a sonifier made before the process group, and a run that is never closed.
The ground truth of every norm is taken at the moment of the update, in float64.
"""

from __future__ import annotations

import gc
import math
import shutil
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch import nn

from gradsonic import GradientSonifier
from gradsonic.mapping import ALARM, plan_tones
from gradsonic.recording import read_recording
from gradsonic.render import frames
from gradsonic.sinks.memory import MemorySink
from gradsonic.tap import F32_MAX

from .fixtures.models import TinyMLP, batch
from .test_integrations import single_process_norms, torchrun

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = ("fc1", "fc2", "head")


def applied_norms(model: nn.Module, divide_by: torch.Tensor | None = None) -> list[float]:
    """The float64 norms of the Linear weights' gradients as they are now (divided by a scale)."""
    out = []
    for name in WEIGHTS:
        g = getattr(model, name).weight.grad.double()
        if divide_by is not None:
            g = g / divide_by.double()
        out.append(float(g.norm()))
    return out


def step_data(model: nn.Module, i: int) -> torch.Tensor:
    x, y = batch(model, seed=i)
    return ((model(x) - y) ** 2).mean()


# -- fused optimizers under a GradScaler -----------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, fused=True)], ids=["adamw", "sgd"])
def test_fused_optimizer_with_grad_scaler_is_heard_unscaled_and_its_skipped_step_as_skipped(make):
    torch.manual_seed(0)
    model = TinyMLP()
    opt = make(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    records, truth, scales = [], [], []

    def at_update(o, args, kwargs):  # the fused kernel divides by this scale as it updates
        scales.append(float(o.grad_scale))
        truth.append(applied_norms(model, o.grad_scale))

    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(opt, scaler=scaler)
        opt.register_step_pre_hook(at_update)
        for i in range(5):
            opt.zero_grad()
            scaler.scale(step_data(model, i)).backward()
            if i == 2:
                model.fc2.weight.grad[0, 0] = float("inf")  # an fp16 overflow
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            if i == 2:  # the fused kernel skipped the update...
                assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        son.flush()
        assert son.stats.alarm_steps == 1
    # ...and it was heard once, as skipped; the scale dropped after it, the norms did not move
    assert scales == [1024.0, 1024.0, 1024.0, 512.0, 512.0]
    assert [r.skipped for r in records] == [False, False, True, False, False]
    for i in (0, 1, 3, 4):
        np.testing.assert_allclose(records[i].norms, truth[i], rtol=1e-5)


def test_fused_optimizer_after_unscale_and_clipping_hears_the_clipped_gradient():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    records, truth = [], []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(opt, scaler=scaler)
        opt.register_step_pre_hook(lambda o, a, k: truth.append(applied_norms(model)))
        for i in range(3):
            opt.zero_grad()
            scaler.scale(step_data(model, i)).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            scaler.step(opt)
            scaler.update()
    np.testing.assert_allclose(np.stack([r.norms for r in records]), truth, rtol=1e-5)
    assert all(np.linalg.norm(t) <= 0.05 + 1e-6 for t in truth)


# -- compiled steps ----------------------------------------------------------------------------


def _has_compiler() -> bool:
    return any(shutil.which(c) for c in ("cc", "gcc", "g++", "clang"))


@pytest.mark.parametrize("backend", [
    "eager", pytest.param("inductor", marks=pytest.mark.skipif(
        not _has_compiler(), reason="inductor needs a C++ compiler"))])
def test_a_compiled_optimizer_step_trains_and_is_heard(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    records, truth = [], []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(opt)
        opt.register_step_pre_hook(lambda o, a, k: truth.append(applied_norms(model)))
        compiled_step = torch.compile(lambda: opt.step(), backend=backend)
        for i in range(3):
            opt.zero_grad()
            step_data(model, i).backward()
            compiled_step()
    torch._dynamo.reset()
    assert len(records) == 3 == len(truth)
    np.testing.assert_allclose(np.stack([r.norms for r in records]), truth, rtol=1e-5)


# -- sharding and ranks (two gloo processes under torchrun) -------------------------------------


def run_child(mode: str, tmp_path: Path, steps: int = 4) -> subprocess.CompletedProcess:
    proc = torchrun(REPO / "tests" / "recipes_child.py", mode, str(tmp_path), str(steps),
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("mode", ["hsdp-2x1", "hsdp-1x2", "fsdp1-orig"])
def test_sharded_runs_hear_the_norms_of_one_unsharded_process(tmp_path, mode):
    proc = run_child(mode, tmp_path)
    assert "rank 0: sound" in proc.stdout and "rank 1: silent" in proc.stdout
    heard = np.load(tmp_path / "norms.npy")
    # HSDP's replicas hold the same gradient: summed over them it would be x sqrt(2)
    np.testing.assert_allclose(heard, single_process_norms(4), rtol=1e-5)
    assert soundfile.info(str(tmp_path / "run.wav")).frames == 4 * 5 * 441


def test_fsdp1_with_flat_parameters_is_refused_with_what_to_do(tmp_path):
    proc = run_child("fsdp1-flat", tmp_path)
    for rank in (0, 1):
        assert f"rank {rank}: refused: FullyShardedDataParallel(use_orig_params=False)" in \
            proc.stdout
    assert "use_orig_params=True" in proc.stdout and "fully_shard" in proc.stdout
    assert not (tmp_path / "run.wav").exists()


def test_ddp_sonifier_made_before_init_process_group_shares_one_run_dir(tmp_path):
    proc = run_child("ddp-early", tmp_path)
    assert "rank 0: sound" in proc.stdout and "rank 1: silent" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.gsr", "run.wav"]
    assert len(read_recording(tmp_path / "run" / "run.gsr").steps) == 4
    np.testing.assert_allclose(np.load(tmp_path / "norms.npy"), single_process_norms(4),
                               rtol=1e-5)


def test_without_a_launcher_rank_the_silent_rank_removes_its_files_at_the_first_step(tmp_path):
    proc = run_child("ddp-early-norank", tmp_path)
    assert "rank 0: sound" in proc.stdout and "rank 1: silent" in proc.stdout
    runs = list((tmp_path / "gradsonic-runs").iterdir())
    assert len(runs) == 1, runs  # rank 1's folder is gone
    assert len(read_recording(runs[0] / "run.gsr").steps) == 4


# -- voices over the whole run -------------------------------------------------------------------


def test_unfreezing_a_frozen_resnet18_stays_within_the_voice_budget():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=4)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.fc.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    records, truth = [], []
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(opt)

        def at_update(o, args, kwargs):
            named = dict(model.named_parameters())
            truth.append([math.sqrt(sum(float(named[n].grad.double().norm()) ** 2
                                        for n in names if named[n].grad is not None))
                          for names in son.layer_params])

        opt.register_step_post_hook(at_update)
        for i in range(3):
            if i == 1:  # the whole backbone is unfrozen
                for p in model.parameters():
                    p.requires_grad_(True)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        assert son.layer_names[0] == "fc" and len(son.layer_names) <= 16
        assert "layer4.1" in son.layer_names  # grouped as the model's blocks
        covered = {n for names in son.layer_params for n in names}
        assert covered == {n for n, p in model.named_parameters() if not n.endswith("bias")}
    assert [len(r.layer_names) for r in records][0] == 1
    for rec, want in zip(records, truth):
        # float32 norms of 1e5-element gradients against float64: the rtol 1e-4
        np.testing.assert_allclose(rec.norms[~rec.missing], np.asarray(want)[~rec.missing],
                                   rtol=1e-4)


def test_two_optimizers_splitting_the_layers_are_summarised_as_their_union():
    torch.manual_seed(0)
    model = TinyMLP()
    first = torch.optim.SGD([model.fc1.weight, model.fc1.bias, model.fc2.weight], lr=0.1)
    second = torch.optim.Adam([model.fc2.bias, model.head.weight, model.head.bias], lr=0.01)
    with GradientSonifier(model, wav=None) as son:
        son.wrap(first)
        son.wrap(second)
        first.zero_grad()
        step_data(model, 0).backward()
        first.step()  # a critic's steps before the generator's first: both are described
        assert son.layer_params == (("fc1.weight",), ("fc2.weight",), ("head.weight",))
        assert "not selected" not in son.summary()
        for i in range(2):
            for opt in (first, second):
                opt.zero_grad()
                step_data(model, i).backward()
                opt.step()
        assert son.layer_params == (("fc1.weight",), ("fc2.weight",), ("head.weight",))
        assert son.summary().splitlines()[0].endswith("(100.0%)")


def test_a_16m_element_layer_is_heard_to_float32_precision():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096), nn.Linear(4096, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        son.wrap(opt)
        model(torch.randn(64, 4096)).pow(2).mean().backward()
        truth = [float(m.weight.grad.double().norm()) for m in model]
        opt.step()
    # torch's own float32 norm is off by 6.5e-4 here; gradsonic reduces in rows
    assert abs(float(torch.linalg.vector_norm(model[0].weight.grad)) / truth[0] - 1) > 1e-4
    np.testing.assert_allclose(records[0].norms, truth, rtol=2e-6)


# -- wrappers and hooks that change the gradient -----------------------------------------------


class ClippingWrapper(torch.optim.Optimizer):
    """Like Opacus' DPOptimizer: an Optimizer that never calls Optimizer.__init__, keeps the real
    one in ``original_optimizer`` and changes the gradients in its own step (clip + noise)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        self.original_optimizer = optimizer
        self.max_norm = max_norm

    @property
    def param_groups(self):
        return self.original_optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none)

    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        nn.utils.clip_grad_norm_(params, self.max_norm)
        g = torch.Generator().manual_seed(7)
        for p in params:
            p.grad.add_(torch.randn(p.grad.shape, generator=g) * 1e-3)
        return self.original_optimizer.step()


def test_an_original_optimizer_wrapper_is_heard_after_it_clips_and_adds_noise():
    torch.manual_seed(0)
    model = TinyMLP()
    inner = torch.optim.SGD(model.parameters(), lr=0.5)
    wrapper = ClippingWrapper(inner, max_norm=0.01)
    records, truth, raw = [], [], []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        assert son.wrap(wrapper) is wrapper
        inner.register_step_pre_hook(lambda o, a, k: truth.append(applied_norms(model)))
        for i in range(3):
            wrapper.zero_grad()
            step_data(model, i).backward()
            raw.append(applied_norms(model))
            wrapper.step()
    np.testing.assert_allclose(np.stack([r.norms for r in records]), truth, rtol=1e-5)
    assert np.linalg.norm(raw[0]) > 10 * np.linalg.norm(truth[0])  # the change is large


def test_a_step_pre_hook_registered_after_wrap_that_clips_is_heard_after_it():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    records, truth = [], []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(opt)
        opt.register_step_pre_hook(
            lambda o, a, k: nn.utils.clip_grad_norm_(model.parameters(), 1e-3) and None)
        opt.register_step_pre_hook(lambda o, a, k: truth.append(applied_norms(model)))
        for i in range(3):
            opt.zero_grad()
            step_data(model, i).backward()
            opt.step()
    np.testing.assert_allclose(np.stack([r.norms for r in records]), truth, rtol=1e-5)
    assert all(np.linalg.norm(t) <= 1e-3 + 1e-9 for t in truth)


# -- alarms ----------------------------------------------------------------------------------------


def undo_nan_update(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Step, then put back any weight a NaN gradient reached (later steps stay healthy)."""
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            if not torch.isfinite(p).all():
                p.copy_(b)


def test_a_nan_in_a_bias_is_an_alarm_on_its_layers_voice():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    records, mem = [], MemorySink()
    with GradientSonifier(model, wav=None, sinks=[mem], on_step=records.append) as son:
        opt = son.wrap(opt)
        for i in range(3):
            opt.zero_grad()
            step_data(model, i).backward()
            if i == 1:
                model.fc2.bias.grad[3] = float("nan")  # not a voice: biases are not heard
            undo_nan_update(model, opt)
        son.flush()
        assert son.stats.alarm_steps == 1 and son.stats.alarm_tones == 1
    assert [r.nonfinite.tolist() for r in records] == [
        [False, False, False], [False, True, False], [False, False, False]]
    assert np.isfinite(records[1].norms[[0, 2]]).all()
    _, kinds = plan_tones(lambda n: 200 + n, records[1].norms[None], records[1].missing[None])
    assert (kinds[0] == ALARM).tolist() == [False, True, False]


def test_a_nan_outside_layers_sounds_on_the_nearest_selected_voice():
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    with GradientSonifier(model, layers=["fc1", "head"], wav=None, on_step=records.append) as son:
        opt = son.wrap(opt)
        opt.zero_grad()
        step_data(model, 0).backward()
        model.fc2.weight.grad[0, 0] = float("inf")  # a layer nobody listens to
        opt.step()
    assert records[0].nonfinite.tolist() == [True, False]  # fc2 sits right after fc1


def test_a_nan_at_a_step_every_skips_still_sounds(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with GradientSonifier(model, run_dir=tmp_path / "run", every=5, quiet=True) as son:
        opt = son.wrap(opt)
        for i in range(12):
            opt.zero_grad()
            step_data(model, i).backward()
            if i == 7:
                model.head.weight.grad[0, 0] = float("nan")
            undo_nan_update(model, opt)
        son.flush()
        assert son.stats.steps == 4 and son.stats.alarm_steps == 1  # steps 0, 5, 7, 10
    rec = read_recording(tmp_path / "run" / "run.gsr")
    assert np.flatnonzero(rec.sounded()).tolist() == [0, 5, 7, 10]
    wav, _ = soundfile.read(str(tmp_path / "run" / "run.wav"), dtype="float32")
    assert len(wav) == 4 * 5 * 441
    np.testing.assert_array_equal(wav, np.concatenate(list(frames(rec))))
    out = subprocess.run([sys.executable, "-m", "gradsonic.cli", "info", str(tmp_path / "run")],
                         capture_output=True, text=True)
    assert "audio 0.2 s" in out.stdout, out.stdout + out.stderr


def test_finite_gradients_beyond_float32_are_stored_finite_not_alarms():
    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(opt)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        model.fc1.weight.grad.fill_(1e38)  # 128 elements: norm 1.1e39 > float32's 3.4e38
        model.fc2.weight.grad.fill_(1e19)  # norm 1.6e20: squares overflow float32, not the norm
        opt.step()
    rec = records[0]
    assert not rec.nonfinite.any()
    assert rec.norms[0] == F32_MAX
    np.testing.assert_allclose(rec.norms[1], 1e19 * 16, rtol=1e-5)
    np.testing.assert_allclose(rec.norms[2], math.sqrt(48), rtol=1e-6)


# -- runs that end without close() ---------------------------------------------------------------


def test_a_hand_update_loop_that_never_closes_is_warned_at_exit(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from tests.fixtures.models import TinyMLP
        from gradsonic import GradientSonifier
        model = TinyMLP()
        sonifier = GradientSonifier(model, run_dir="run", quiet=True)
        optimizer = sonifier.wrap(torch.optim.SGD(model.parameters(), lr=0.1))  # never stepped
        for i in range(3):  # word_language_model-style: the update by hand
            model.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-0.1)
        print(sonifier.summary().splitlines()[-1])
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("no step heard yet")
    assert "heard no optimizer step" in proc.stderr
    assert "son.step()" in proc.stderr and "wrap" in proc.stderr


def test_a_bound_method_on_step_of_the_object_holding_the_sonifier_is_collected():
    class Trainer:
        def __init__(self, model):
            self.norms = []
            self.son = GradientSonifier(model, wav=None, on_step=self.on_step)

        def on_step(self, record):
            self.norms.append(record.norms)

    model = TinyMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model)
    trainer.son.wrap(opt)
    opt.zero_grad()
    step_data(model, 0).backward()
    opt.step()
    trainer.son.flush()
    assert len(trainer.norms) == 1
    son_ref = weakref.ref(trainer.son)
    del trainer
    gc.collect()
    assert son_ref() is None  # collected: its hooks went with it
    assert len(opt._optimizer_step_pre_hooks) == 0 and len(opt._optimizer_step_post_hooks) == 0


def test_a_nested_parametrization_is_heard_under_its_layers_name():
    from torch.nn.utils import parametrize

    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    parametrize.register_parametrization(model[0], "weight", Scale())
    parametrize.register_parametrization(model[0].parametrizations.weight, "original", Scale())
    with GradientSonifier(model, wav=None) as son:
        assert son.layer_names == ("0", "1")
        assert son.layer_params[0] == ("0.parametrizations.weight.parametrizations.original."
                                       "original",)


def test_a_wrapper_without_a_torch_optimizer_inside_is_refused_naming_the_attributes():
    class NotAnOptimizer:
        def step(self):
            pass

    with GradientSonifier(TinyMLP(), wav=None) as son:
        with pytest.raises(TypeError, match="original_optimizer"):
            son.wrap(NotAnOptimizer())

"""CUDA: the training thread never synchronises with the device (needs a GPU; skipped on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsonic import GradientSonifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_training_steps_never_sync_and_norms_arrive():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).cuda()
    records = []
    direct = []
    x = torch.randn(32, 64, device="cuda")
    with GradientSonifier(model, wav="cuda.wav", on_step=records.append) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01, foreach=True))
        for _ in range(3):  # warm up kernels and allocators outside the checked region
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any implicit sync now raises
        try:
            for _ in range(5):
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.zero_grad()
        model(x).square().mean().backward()
        direct = [m.weight.grad.norm().item() for m in model if isinstance(m, torch.nn.Linear)]
        opt.step()
        son.flush()
    assert len(records) == 9
    np.testing.assert_allclose(records[-1].norms, direct, rtol=1e-4)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10)).cuda()


def test_fused_adamw_with_grad_scaler_is_heard_unscaled_without_a_sync():
    """The recipes issue's fused AMP path on CUDA: norms divided by the scale on the device,
    found_inf copied to the host asynchronously and read by the worker."""
    model = _model()
    x = torch.randn(32, 64, device="cuda")
    records, truth = [], []
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 12)
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True), scaler=scaler)
        opt.register_step_pre_hook(lambda o, a, k: truth.append(
            [float((m.weight.grad.double() / o.grad_scale.double()).norm())
             for m in model if isinstance(m, torch.nn.Linear)]))
        for step in range(6):
            if step == 3:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = model(x).float().square().mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        torch.cuda.set_sync_debug_mode("default")
        son.flush()
    assert len(records) == 6 and not any(r.skipped for r in records)
    np.testing.assert_allclose(np.stack([r.norms for r in records[:3]]), truth[:3], rtol=1e-3)


def test_a_compiled_optimizer_step_on_cuda_is_heard():
    model = _model()
    x = torch.randn(32, 64, device="cuda")
    records = []
    with GradientSonifier(model, wav=None, on_step=records.append) as son:
        opt = son.wrap(torch.optim.Adam(model.parameters(), lr=1e-3))
        step = torch.compile(lambda: opt.step())
        for _ in range(4):
            opt.zero_grad()
            model(x).square().mean().backward()
            direct = [m.weight.grad.norm().item() for m in model if isinstance(m, torch.nn.Linear)]
            step()
        son.flush()
    assert len(records) == 4
    np.testing.assert_allclose(records[-1].norms, direct, rtol=1e-4)

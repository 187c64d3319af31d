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

"""The seed experiment's network, its five settings, and the training loop the demo runs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..sonifier import GradientSonifier
from ..tap import StepRecord


class SeedCNN(nn.Module):
    """conv 1->20 k5, conv 20->50 k5, fc 800->500, fc 500->10; ReLU, 2x2 max-pool, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)

    def ordered_layers(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.fc1, self.fc2]


@dataclass(frozen=True)
class Preset:
    name: str
    optimizer: str  # "sgd" (momentum 0.5) or "adam"
    lr: float
    batch_size: int
    listen_for: str
    seed: int = 1  # torch.manual_seed for the full MNIST training set (the 2019 experiment's)
    embedded_seed: int | None = None  # seed for the embedded 4,000-image subset, if different

    def seed_for(self, embedded: bool) -> int:
        return self.embedded_seed if embedded and self.embedded_seed is not None else self.seed

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.lr)
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.5)


# The trajectories depend on the exact batches. Seed 1 is the 2019 experiment's and gives the
# described behaviour on the full training set (measured: lr 1.0/bs 256 reaches NaN at step 11).
# The embedded 4,000-image subset shuffles differently, so three presets fix another seed there,
# picked as the first that shows the same behaviour (surveyed over seeds 0-6, 200 steps):
# sgd-lr1.0 seed 5 (fc1 up to ~1.7e4, then dead), sgd-lr1.0-bs256 seed 6 (NaN at step 15),
# adam-lr0.01 seed 5 (spikes up to ~72, then dead).
PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("sgd-lr0.01", "sgd", 0.01, 10,
           "pitch rises slowly as the gradients grow while the network learns"),
    Preset("sgd-lr0.1", "sgd", 0.1, 10,
           "higher, jumpier tones early that settle as training goes on"),
    Preset("sgd-lr1.0", "sgd", 1.0, 10,
           "the explosion: tones shoot up, then the network dies and every layer sits on the "
           "floor pitch (norm 0)", embedded_seed=5),
    Preset("sgd-lr1.0-bs256", "sgd", 1.0, 256,
           "norms climb by orders of magnitude and turn NaN: the noise-burst alarm takes over",
           embedded_seed=6),
    Preset("adam-lr0.01", "adam", 0.01, 10,
           "early spikes, then the network dies and the tones sink to the floor pitch",
           embedded_seed=5),
]}


@dataclass
class TrainResult:
    preset: Preset
    steps: int
    norms: np.ndarray  # [steps, 4] float32, NaN where missing
    losses: np.ndarray  # [steps] float32
    wav: str | None
    alarm_steps: int
    layer_names: tuple[str, ...] = field(default=())


def train_preset(
    preset: Preset | str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 200,
    seed: int | None = None,
    wav: str | os.PathLike[str] | None = None,
    sonify: bool = True,
    progress: Callable[[int], Any] | None = None,
    **sonifier_kwargs: Any,
) -> TrainResult:
    """Train the seed CNN for ``steps`` optimizer steps under ``preset``, listening with gradsonic.

    ``seed`` defaults to ``preset.seed``. ``sonify=False`` runs the same loop bare (the baseline
    for overhead measurements).
    """
    if isinstance(preset, str):
        preset = PRESETS[preset]
    torch.manual_seed(preset.seed if seed is None else seed)
    model = SeedCNN()
    optimizer = preset.make_optimizer(model)
    loader = DataLoader(TensorDataset(images, labels), batch_size=preset.batch_size, shuffle=True)

    records: list[StepRecord] = []
    sonifier = None
    if sonify:
        sonifier_kwargs.setdefault("mapping", "seed")
        sonifier_kwargs.setdefault("quiet", True)  # the demo prints its own list of files
        sonifier = GradientSonifier(model, layers=model.ordered_layers(), wav=wav,
                                    on_step=records.append, **sonifier_kwargs)
        optimizer = sonifier.wrap(optimizer)  # the two lines that attach gradsonic
    losses = np.zeros(steps, dtype=np.float32)
    loss_values: list[torch.Tensor] = []
    try:
        step = 0
        while step < steps:
            for x, y in loader:
                optimizer.zero_grad()
                loss = F.nll_loss(model(x), y)
                loss.backward()
                optimizer.step()
                loss_values.append(loss.detach())
                step += 1
                if progress is not None:
                    progress(1)
                if step >= steps:
                    break
    finally:
        if sonifier is not None:
            sonifier.close()
    if loss_values:
        losses[: len(loss_values)] = torch.stack(loss_values).numpy()
    norms = (np.stack([r.norms for r in records]) if records
             else np.zeros((0, 4), dtype=np.float32))
    return TrainResult(
        preset=preset, steps=steps, norms=norms, losses=losses,
        wav=None if wav is None or not sonify else str(wav),
        alarm_steps=sonifier.stats.alarm_steps if sonifier is not None else 0,
        layer_names=sonifier.layer_names if sonifier is not None else (),
    )

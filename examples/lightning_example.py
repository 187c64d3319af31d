"""Hear a PyTorch Lightning run: one callback.

    python examples/lightning_example.py --steps 200 --wav lightning.wav
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn

from gradsonic.lightning import SonifierCallback  # + line 1


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--wav", default="lightning.wav")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[SonifierCallback(wav=args.wav)])  # + line 2
    trainer.fit(Regressor(), torch.utils.data.DataLoader(data, batch_size=32, shuffle=True))
    print(f"wrote {args.wav}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

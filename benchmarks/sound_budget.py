"""Sound budget: audio per optimizer step and voices for real models, and how audible a spike is.

    python benchmarks/sound_budget.py [--smoke]

1. Seed CNN, GPT-2 small (built from its config, random weights) and ResNet-50 (torchvision, no
   weights), a few real CPU training steps each: voices and seconds of audio per step with the
   defaults, and with ``voices="all"`` (one voice per layer, as before).
2. Spike audibility: a 75-layer residual MLP trained on fresh random batches; at one step one
   layer's gradient is multiplied by 10. Each step's audio -> log-magnitude spectrum (Hann window,
   60 dB floor); the distance of each step's spectrum to the previous step's; the spike step's
   distance as a robust z-score (median / 1.4826 MAD) against all other steps. Side by side: the
   sound before this change (one voice per layer, log mapping 1 octave per decade from 55 Hz, no
   accents) and the new defaults.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch
from torch import nn

from _harness import environment
from gradsonic import GradientSonifier, LogMapping, MemorySink

OLD = dict(voices="all", accents=False,
           mapping=LogMapping(center_hz=440.0, octaves_per_decade=1.0, min_hz=55.0, max_hz=3520.0))


def seconds_per_step(model: nn.Module, loss, steps: int, **kwargs) -> tuple[int, float]:
    mem = MemorySink()
    with GradientSonifier(model, wav=None, sinks=[mem], **kwargs) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=1e-4))
        for i in range(steps):
            opt.zero_grad()
            loss(i).backward()
            opt.step()
    return len(son.layer_names), mem.frames.size / son.synth.sample_rate / steps


def models(smoke: bool):
    from gradsonic.demo import SeedCNN

    seed = SeedCNN()
    yield "seed CNN", seed, lambda i: seed(torch.randn(10, 1, 28, 28)).logsumexp(1).mean()
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ModuleNotFoundError:
        print("(transformers not installed: GPT-2 skipped)")
    else:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2) if smoke else GPT2Config()
        gpt = GPT2LMHeadModel(cfg)
        ids = torch.randint(0, cfg.vocab_size, (1, 32))
        yield "GPT-2 small" if not smoke else "GPT-2 (2 layers)", gpt, \
            lambda i: gpt(ids, labels=ids).loss
    from torchvision.models import resnet18, resnet50

    net = resnet18() if smoke else resnet50()
    x = torch.randn(2, 3, 64, 64)
    yield "ResNet-18" if smoke else "ResNet-50", net, lambda i: net(x).logsumexp(1).mean()


class Residual(nn.Module):
    def __init__(self, n_layers: int = 75, width: int = 32) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + 0.1 * torch.tanh(block(x))
        return x


def spike_z(steps: int, spike_at: int, layer: int, seed: int, **kwargs) -> tuple[float, float]:
    """Robust z of the spike step's spectral change, and the seconds of audio per step."""
    torch.manual_seed(seed)
    model = Residual()
    mem = MemorySink()
    with GradientSonifier(model, wav=None, sinks=[mem], **kwargs) as son:
        opt = son.wrap(torch.optim.SGD(model.parameters(), lr=0.01))
        target = model.blocks[layer].weight
        for i in range(steps):
            opt.zero_grad()
            model(torch.randn(16, 32)).pow(2).mean().backward()
            if i == spike_at:
                target.grad.mul_(10.0)
            opt.step()
    step = son.synth.step_samples(len(son.layer_names))
    audio = mem.frames.reshape(steps, step)
    window = np.hanning(step)
    db = 20 * np.log10(np.abs(np.fft.rfft(audio * window, axis=1)) + 1e-12)
    db = np.maximum(db, db.max() - 60.0)  # 60 dB floor
    dist = np.linalg.norm(np.diff(db, axis=0), axis=1)  # dist[k - 1]: step k vs step k - 1
    spike = dist[spike_at - 1]
    others = np.delete(dist, spike_at - 1)
    med = np.median(others)
    mad = 1.4826 * np.median(np.abs(others - med))
    return (spike - med) / mad, step / son.synth.sample_rate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="small models, a few seconds")
    args = p.parse_args(argv)
    print(environment())
    print("\n| model | voices (default) | audio per step (default) | voices (one per layer) | "
          "audio per step (one per layer) |\n| --- | --- | --- | --- | --- |")
    for name, model, loss in models(args.smoke):
        n, s = seconds_per_step(model, loss, 2)
        n_all, s_all = seconds_per_step(model, loss, 2, voices="all")
        print(f"| {name} | {n} | {s * 1e3:.0f} ms | {n_all} | {s_all * 1e3:.0f} ms |")
    steps, seeds = (30, [0]) if args.smoke else (80, [0, 1, 2, 3, 4])
    print(f"\nspike audibility: 75-layer residual MLP, {steps} steps, layer 37's gradient x10 at "
          f"step {steps // 2}; robust z of the spectral change (seeds {seeds})")
    print("| sound | audio per step | z per seed | median z |\n| --- | --- | --- | --- |")
    for label, kwargs in (("before (one voice per layer, 1 oct/decade, no accents)", OLD),
                          ("16 voices, no accents", dict(accents=False)),
                          ("new defaults (16 voices, accents)", {})):
        zs, secs = [], 0.0
        for seed in seeds:
            z, secs = spike_z(steps, steps // 2, 37, seed, **kwargs)
            zs.append(z)
        print(f"| {label} | {secs * 1e3:.0f} ms | {', '.join(f'{z:.1f}' for z in zs)} | "
              f"{statistics.median(zs):.1f} |")


if __name__ == "__main__":
    sys.exit(main())

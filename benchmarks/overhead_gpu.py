"""Training-step overhead on a CUDA GPU (issue 4's targets): bare vs the original's way vs gradsonic.

    python benchmarks/overhead_gpu.py [--rounds 30] [--block 20] [--smoke]

Workloads: torchvision resnet50 (batch 64, 224x224), a GPT-style transformer of ~85M parameters
(12 layers, d=768, 12 heads, vocab 32k; batch 8 x 512 tokens), the seed CNN (batch 256). SGD, every
layer with a weight selected, WAV sink on. Variants, each its own model copy, rotating order:
  bare       plain steps
  original   per-layer weight.grad.norm().item() (one device sync per layer)
  gradsonic  GradientSonifier(wav=...): one fused norm per step, async copy, no sync
Prepared for the device tool; not run in CI (needs a GPU).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _harness import environment, interleave, table
from gradsonic import GradientSonifier
from gradsonic.demo import SeedCNN


class GPT(nn.Module):
    def __init__(self, vocab=32000, d=768, heads=12, layers=12, ctx=512):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = torch.triu(torch.full((t, t), float("-inf"), device=idx.device), 1)
        return self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))


def workloads(smoke: bool):
    dev = "cuda"
    import torchvision

    yield ("resnet50 b64", torchvision.models.resnet50(),
           (torch.randn(64 if not smoke else 4, 3, 224, 224, device=dev),
            torch.randint(0, 1000, (64 if not smoke else 4,), device=dev)),
           lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    tokens = torch.randint(0, 32000, (8 if not smoke else 1, 512 if not smoke else 64), device=dev)
    yield ("GPT-85M b8x512", GPT(), (tokens,),
           lambda m, b: F.cross_entropy(m(b[0][:, :-1]).flatten(0, 1), b[0][:, 1:].flatten()))
    yield ("seed CNN b256", SeedCNN(),
           (torch.randn(256, 1, 28, 28, device=dev), torch.randint(0, 10, (256,), device=dev)),
           lambda m, b: F.nll_loss(m(b[0]), b[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--block", type=int, default=20)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.block = 2, 2
    print(environment())
    tmp = Path(tempfile.mkdtemp())
    for name, proto, batch, loss_fn in workloads(args.smoke):
        proto = proto.cuda()
        n_params = sum(p.numel() for p in proto.parameters())
        names = ("bare", "original", "gradsonic")
        models = {n: copy.deepcopy(proto) for n in names}
        opts = {n: torch.optim.SGD(m.parameters(), lr=1e-4) for n, m in models.items()}
        son = GradientSonifier(models["gradsonic"], wav=tmp / "gpu.wav")
        son.wrap(opts["gradsonic"])
        weights = [m.weight for m in models["original"].modules()
                   if isinstance(getattr(m, "weight", None), nn.Parameter)]

        def block(v):
            model, opt = models[v], opts[v]

            def run():
                for _ in range(args.block):
                    opt.zero_grad()
                    loss_fn(model, batch).backward()
                    if v == "original":
                        [w.grad.norm().item() for w in weights]
                    opt.step()
            return run

        variants = {v: block(v) for v in names}
        for run in variants.values():
            run()
        results = interleave(variants, args.rounds, "bare", sync=torch.cuda.synchronize)
        son.close()
        print(f"\n{name} ({n_params / 1e6:.1f}M parameters, {len(son.layer_names)} layers), "
              f"{args.rounds} rounds x {args.block} steps")
        print(table(results, "bare", per=args.block))
        models.clear()  # free this workload before the next one
        opts.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

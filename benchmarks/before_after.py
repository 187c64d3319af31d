"""Training-step overhead of this checkout against an earlier revision, in one process.

    python benchmarks/before_after.py [--ref HEAD~1] [--batch 10 64] [--rounds 40] [--block 40]

The earlier revision's ``src/gradsonic`` is taken with ``git archive`` into a temporary folder and
imported as the package ``gradsonic_ref`` next to this checkout's ``gradsonic``, so both run side
by side on the same machine, in the same process, on identical copies of the seed CNN with the
same batches. Variants, timed in rotating order (``_harness.interleave``):

  bare     plain training steps
  ref      GradientSonifier(wav=...) of the earlier revision, wrapped around the optimizer
  this     GradientSonifier(wav=...) of this checkout, likewise

It prints each variant's overhead against bare, and ``this`` against ``ref`` (per-round ratios:
median and min-max).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from _harness import environment, interleave, table

REPO = Path(__file__).resolve().parent.parent


def load_ref(rev: str) -> object:
    """Import ``src/gradsonic`` of git revision ``rev`` as the package ``gradsonic_ref``."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src/gradsonic"],
                          check=True, capture_output=True).stdout
    root = Path(tempfile.mkdtemp(prefix="gradsonic-ref-"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(root, filter="data")
    pkg = root / "src" / "gradsonic"
    spec = importlib.util.spec_from_file_location(
        "gradsonic_ref", pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gradsonic_ref"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="HEAD~1", help="git revision to compare with")
    p.add_argument("--batch", type=int, nargs="+", default=[10, 64])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--block", type=int, default=40, help="steps per timed block")
    p.add_argument("--smoke", action="store_true", help="a few seconds, to prove the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.rounds, args.block = [10], 2, 5
    ref = load_ref(args.ref)
    import gradsonic
    from gradsonic.demo import SeedCNN, load_mnist

    print(environment())
    print(f"ref: {args.ref} ({subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', args.ref], capture_output=True, text=True).stdout.strip()}); this: working tree")
    x_all, y_all = load_mnist(None)
    tmp = Path(tempfile.mkdtemp())
    for batch in args.batch:
        batches = [(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
                   for i in range(args.block)]
        torch.manual_seed(1)
        proto = SeedCNN()
        names = ("bare", "ref", "this")
        models = {n: copy.deepcopy(proto) for n in names}
        opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5)
                for n, m in models.items()}
        sons = {
            "ref": ref.GradientSonifier(models["ref"], wav=tmp / f"ref{batch}.wav",
                                        mapping="seed"),
            "this": gradsonic.GradientSonifier(models["this"], wav=tmp / f"this{batch}.wav",
                                               mapping="seed"),
        }
        for n, son in sons.items():
            son.wrap(opts[n])

        def block(name: str):
            model, opt = models[name], opts[name]

            def run() -> None:
                for x, y in batches:
                    opt.zero_grad()
                    F.nll_loss(model(x), y).backward()
                    opt.step()
            return run

        variants = {n: block(n) for n in names}
        for run in variants.values():  # warm-up
            run()
        results = interleave(variants, args.rounds, "bare")
        for son in sons.values():
            son.close()
        print(f"\nseed CNN, batch {batch}, {args.rounds} rounds x {args.block} steps")
        print(table(results, "bare", per=args.block))
        ratios = [a / b - 1 for a, b in zip(results["this"].seconds, results["ref"].seconds)]
        print(f"this vs ref: median {statistics.median(ratios):+.1%}, "
              f"min .. max {min(ratios):+.1%} .. {max(ratios):+.1%}")


if __name__ == "__main__":
    main()

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

import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


from _harness import environment, interleave, seed_cnn_args, seed_cnn_copies, table, training_block

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
    args = seed_cnn_args(__doc__, argv, ref="HEAD~1")
    ref = load_ref(args.ref)
    import gradsonic

    print(environment())
    print(f"ref: {args.ref} ({subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', args.ref], capture_output=True, text=True).stdout.strip()}); this: working tree")
    tmp = Path(tempfile.mkdtemp())
    for batch in args.batch:
        names = ("bare", "ref", "this")
        batches, models, opts = seed_cnn_copies(names, batch, args.block)
        sons = {
            "ref": ref.GradientSonifier(models["ref"], wav=tmp / f"ref{batch}.wav",
                                        mapping="seed"),
            "this": gradsonic.GradientSonifier(models["this"], wav=tmp / f"this{batch}.wav",
                                               mapping="seed"),
        }
        for n, son in sons.items():
            son.wrap(opts[n])

        variants = {n: training_block(models[n], opts[n], batches) for n in names}
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

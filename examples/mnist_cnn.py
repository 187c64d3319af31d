"""The 2019 experiment: hear a small CNN learn (or blow up) on MNIST.

    python examples/mnist_cnn.py --preset sgd-lr0.01 --data ../shared/data/mnist
    python examples/mnist_cnn.py --preset all            # embedded subset, no network needed
    python examples/mnist_cnn.py --preset adam-lr0.01 --download   # full MNIST via torchvision

Writes one WAV per preset. The network, the presets and the training loop (which attaches
gradsonic in two lines) live in ``gradsonic.demo.seed``; ``gradsonic demo`` runs the same code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradsonic.demo import PRESETS, load_mnist, train_preset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sgd-lr0.01", choices=[*PRESETS, "all"])
    parser.add_argument("--data", help="folder with the MNIST IDX files (.gz or raw)")
    parser.add_argument("--download", action="store_true", help="fetch MNIST with torchvision")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mapping", default="seed", choices=["seed", "log"])
    parser.add_argument("--out", default=".", help="folder for the WAV files")
    args = parser.parse_args(argv)

    images, labels = load_mnist(args.data, download=args.download)
    embedded = args.data is None and not args.download
    names = list(PRESETS) if args.preset == "all" else [args.preset]
    for name in names:
        preset = PRESETS[name]
        wav = Path(args.out) / f"{name}.wav"
        result = train_preset(preset, images, labels, steps=args.steps,
                              seed=preset.seed_for(embedded), wav=wav, mapping=args.mapping)
        print(f"{wav}: {result.steps} steps, final loss {result.losses[-1]:.3f}, "
              f"{result.alarm_steps} NaN/Inf alarm steps - listen for: {preset.listen_for}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

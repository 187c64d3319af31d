"""Rebuild the MNIST subset embedded in ``gradsonic.demo`` (the first N training images).

Usage: python scripts/make_mnist_subset.py ../shared/data/mnist [N]

The subset lets ``gradsonic demo`` run on a machine with no network. See
``src/gradsonic/demo/data/README.md`` for the dataset's attribution and licence.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "gradsonic" / "demo" / "data"


def _subset(src: Path, dst: Path, n: int, item_bytes: int, header: str) -> None:
    with gzip.open(src, "rb") as f:
        raw = f.read()
    size = struct.calcsize(header)
    fields = list(struct.unpack(header, raw[:size]))
    fields[1] = n  # second field of every IDX header is the item count
    body = raw[size : size + n * item_bytes]
    with gzip.GzipFile(dst, "wb", compresslevel=9, mtime=0) as f:
        f.write(struct.pack(header, *fields) + body)


def main() -> None:
    src = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    _subset(src / "train-images-idx3-ubyte.gz", OUT / "train-images-idx3-ubyte.gz", n, 784, ">IIII")
    _subset(src / "train-labels-idx1-ubyte.gz", OUT / "train-labels-idx1-ubyte.gz", n, 1, ">II")


if __name__ == "__main__":
    main()

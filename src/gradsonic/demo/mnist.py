"""MNIST from IDX files (gzipped or not), an embedded subset, or a torchvision download."""

from __future__ import annotations

import gzip
import os
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

EMBEDDED_IMAGES = 4000
MEAN, STD = 0.1307, 0.3081  # the normalisation of the original experiment

_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a uint8 array of its stated shape."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{str(p)!r} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ConfigError(f"{str(p)!r} is truncated: {data.size} bytes for shape {dims}")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / "MNIST" / "raw" / stem,
                      folder / "MNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {stem}[.gz] in {str(folder)!r}; pass the folder holding the four "
                      "MNIST IDX files, or use --download")


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, train: bool = True,
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``[N, 1, 28, 28]`` float32 and labels ``[N]`` int64.

    ``data_dir`` holds the IDX files; with ``download=True`` torchvision fetches them there first;
    with neither, the embedded subset (first 4,000 training images) is used.
    """
    if download:
        try:
            from torchvision.datasets import MNIST
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                "downloading MNIST needs torchvision: pip install 'gradsonic[examples]'") from e
        root = Path(data_dir) if data_dir is not None else Path.home() / ".cache" / "gradsonic"
        MNIST(str(root), train=train, download=True)
        data_dir = root
    if data_dir is None:
        if not train:
            raise ConfigError("the embedded subset holds training images only; pass data_dir")
        folder = resources.files("gradsonic.demo") / "data"
        with resources.as_file(folder) as f:
            images = read_idx(Path(f) / "train-images-idx3-ubyte.gz")
            labels = read_idx(Path(f) / "train-labels-idx1-ubyte.gz")
    else:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise ConfigError(f"MNIST folder {str(folder)!r} does not exist")
        img_stem, lbl_stem = _FILES[train]
        images = read_idx(_find(folder, img_stem))
        labels = read_idx(_find(folder, lbl_stem))
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    x = (x - MEAN) / STD
    return x, torch.from_numpy(labels.astype(np.int64))

"""The 2019 experiment: a LeNet-style CNN on MNIST under five optimizer settings."""

from .mnist import load_mnist
from .seed import PRESETS, Preset, SeedCNN, train_preset

__all__ = ["PRESETS", "Preset", "SeedCNN", "load_mnist", "train_preset"]

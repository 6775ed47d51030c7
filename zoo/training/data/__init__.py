"""Training data: synthetic shapes, scikit-learn's digits, IDX files (MNIST format), CIFAR-10 and image folders.

The caller picks the source (``open_dataset("synthetic" | "digits" | "idx:PATH" | "cifar10:PATH" |
"folder:PATH")``); models never know. Every dataset yields float32 (C, H, W) tensors in [-1, 1] and
serves whole batches by index, so the trainer's data order is a pure function of (seed, step).
Sources with classes also serve labels (``batch_labels``), which the quality metric's classifier
learns (``zoo.training.metrics``). CIFAR-10 format and MD5 sums: https://www.cs.toronto.edu/~kriz/cifar.html;
IDX format: http://yann.lecun.com/exdb/mnist/ (the "FILE FORMATS" section).
"""

from __future__ import annotations

from zoo.training.data.base import ImageDataset
from zoo.training.data.cifar import Cifar10
from zoo.training.data.digits import Digits
from zoo.training.data.folder import ImageFolder
from zoo.training.data.idx import IdxImages, read_idx
from zoo.training.data.synthetic import SyntheticImages
from zoo.training.data.unpickle import UnsafePickleError, restricted_load

__all__ = [
    "ImageDataset",
    "SyntheticImages",
    "Cifar10",
    "ImageFolder",
    "Digits",
    "IdxImages",
    "read_idx",
    "open_dataset",
    "restricted_load",
    "UnsafePickleError",
    "DATA_SOURCES",
]


def _synthetic(arg: str, size: int, train: bool, seed: int) -> ImageDataset:
    return SyntheticImages(size, seed=seed if train else seed + 1_000_003)


def _cifar10(arg: str, size: int, train: bool, seed: int) -> ImageDataset:
    if size != 32:
        raise ValueError(f"CIFAR-10 images are 32x32; got size={size} (use --size 32)")
    return Cifar10(arg, train=train)


# Each data source once: its spec name, whether it takes a PATH argument, and how it opens.
_SOURCES = {
    "synthetic": (False, _synthetic),
    "digits": (False, lambda arg, size, train, seed: Digits(size, train=train)),
    "idx": (True, lambda arg, size, train, seed: IdxImages(arg, size, train=train)),
    "cifar10": (True, _cifar10),
    "folder": (True, lambda arg, size, train, seed: ImageFolder(arg, size)),
}
DATA_SOURCES = tuple(f"{name}:PATH" if takes_path else name for name, (takes_path, _) in _SOURCES.items())


def open_dataset(spec: str, size: int, train: bool = True, seed: int = 0) -> ImageDataset:
    """A data spec (``DATA_SOURCES``) -> a dataset of ``size`` x ``size`` images.

    ``train=False`` gives held-out data: CIFAR-10's test batch, IDX's t10k files, the digits'
    held-out fifth, another synthetic seed, or (for a folder, which has no split) the same images.
    """
    kind, _, arg = spec.partition(":")
    takes_path, source = _SOURCES.get(kind, (None, None))
    if source is None or takes_path != bool(arg):
        raise ValueError(f"unknown data source {spec!r}: expected one of {', '.join(DATA_SOURCES)}")
    return source(arg, size, train, seed)

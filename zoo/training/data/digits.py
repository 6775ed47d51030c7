"""scikit-learn's 8x8 digits: 1,797 images with their classes, a fifth held out."""

from __future__ import annotations

import numpy as np

from zoo.training.data.base import _InMemoryImages, _grey_images
from zoo.validate import check_int

__all__ = ["Digits", "DIGITS_HELDOUT_EVERY"]

DIGITS_HELDOUT_EVERY = 5  # image i is held out when i % 5 == 0: 360 held out, 1,437 to train on


class Digits(_InMemoryImages):
    """The 1,797 8x8 handwritten digits (10 classes) that ship inside scikit-learn's wheel (UCI optdigits).

    Pixel values 0..16 map to [-1, 1]. A fixed split: every 5th image is held out (``train=False``).
    Other ``size`` values resize the 8x8 images (bilinear, antialiased).
    """

    channels = 1
    num_classes = 10
    class_names = tuple(str(d) for d in range(10))

    def __init__(self, size: int = 8, train: bool = True):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("the digits data source needs scikit-learn: pip install scikit-learn") from None
        size = check_int("size", size, 4)  # native 8
        d = load_digits()
        keep = (np.arange(len(d.target)) % DIGITS_HELDOUT_EVERY == 0) != train
        self.size = size
        self.data = _grey_images(d.images[keep] / 16.0, size)  # (N, 1, size, size)
        self.labels = np.asarray(d.target[keep], dtype=np.int64)

"""Synthetic shapes: a random, reproducible image per (seed, index), with its shape's class."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from zoo.resources import check_fits
from zoo.training.data.base import ImageDataset

__all__ = ["SyntheticImages"]

_PALETTE = np.array(
    [[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1], [1, 1, 1], [1, 0, -1]], np.float32
)


class SyntheticImages(ImageDataset):
    """Deterministic procedural RGB images: a muted gradient background with one or two flat shapes.

    Image i is drawn from ``numpy.random.default_rng([seed, i])`` alone, at any ``size``; nothing is
    stored. Shapes are discs, squares and striped squares in eight saturated colours. The class of
    an image is what the generator drew: ``3 * (shapes - 1) + kind of the top shape`` (kinds: disc,
    square, striped square), six classes in all.
    """

    num_classes = 6
    class_names = ("1 disc", "1 square", "1 striped", "2, disc on top", "2, square on top", "2, striped on top")

    def __init__(self, size: int, n: int = 50_000, seed: int = 0):
        if size < 4 or n < 1:
            raise ValueError(f"size={size!r} and n={n!r} are invalid: expected size >= 4 and n >= 1")
        self.size, self.n, self.seed = size, n, seed
        check_fits(24 * size * size, f"synthetic {size}x{size} coordinate grids", "choose a smaller --size")
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        self._yy, self._xx = yy, xx

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} synthetic images")
        return torch.from_numpy(self.image(i))

    def image(self, i: int) -> np.ndarray:
        return self.draw(i)[0]

    def batch_labels(self, indices: Sequence[int]) -> np.ndarray:
        return np.array([self.draw(int(i))[1] for i in indices], dtype=np.int64)

    def draw(self, i: int) -> tuple[np.ndarray, int]:
        """Image i (3, size, size) float32 in [-1, 1] and its class."""
        rng = np.random.default_rng([self.seed, i])
        yy, xx = self._yy, self._xx
        base = _PALETTE[rng.integers(len(_PALETTE))] * 0.4  # muted background colour
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)  # a gentle gradient, -0.7..0.7
        img = base[:, None, None] + 0.3 * ramp[None]
        count = int(rng.integers(1, 3))
        for _ in range(count):
            color = _PALETTE[rng.integers(len(_PALETTE))]
            cy, cx = rng.uniform(0.25, 0.75, 2)
            r = rng.uniform(0.18, 0.32)
            kind = rng.integers(6)  # 3/6 discs, 2/6 squares, 1/6 striped squares
            if kind < 3:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
                if kind == 5:
                    mask &= np.floor((yy - cy + r) * self.size / 2) % 2 == 0
            img = np.where(mask[None], color[:, None, None], img)
        top = 0 if kind < 3 else 2 if kind == 5 else 1
        return np.ascontiguousarray(np.clip(img, -1, 1), dtype=np.float32), 3 * (count - 1) + top

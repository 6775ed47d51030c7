"""What every data source is: a map-style dataset of (C, H, W) float32 images in [-1, 1] that serves whole
batches (and labels, where the source has classes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from zoo.resources import check_fits

__all__ = ["ImageDataset"]

class ImageDataset(torch.utils.data.Dataset):
    """A map-style dataset of (C, H, W) float32 images in [-1, 1] that can also build whole batches."""

    channels = 3
    size: int
    num_classes = 0  # > 0 where the source knows a class per image (then ``batch_labels`` works)
    labels: np.ndarray | None = None  # (N,) int64 class per image, where stored

    @property
    def classes(self) -> tuple[str, ...]:
        """The name of every class, index order (the source's own names where it has them)."""
        return tuple(getattr(self, "class_names", None) or (str(i) for i in range(self.num_classes)))

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, C, H, W) for the given indices."""
        return torch.stack([self[int(i)] for i in indices])

    def batch_labels(self, indices: Sequence[int]) -> np.ndarray:
        """(B,) int64 classes for the given indices; ValueError for a source without classes."""
        if self.labels is None:
            raise ValueError(f"{type(self).__name__} has no class labels: the classifier metric needs a labelled source "
                             "(synthetic, digits, idx:PATH with its labels file, cifar10:PATH)")
        return self.labels[np.asarray(indices, dtype=np.int64)]


def _grey_images(pixels: np.ndarray, size: int) -> torch.Tensor:
    """(N, H, W) floats in [0, 1] -> (N, 1, size, size) float32 in [-1, 1], resized (antialiased) if needed."""
    n, h, w = pixels.shape
    check_fits(4 * n * (h * w + 2 * size * size), f"{n:,} images of {h}x{w} at {size}x{size} in float32",
               "choose a smaller --size")
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[:, None]  # (N, 1, H, W)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2 - 1).clamp(-1, 1).contiguous()


class _InMemoryImages(ImageDataset):
    """A dataset held as one (N, C, size, size) float32 tensor ``self.data``."""

    data: torch.Tensor

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        return self.data[torch.as_tensor(np.asarray(indices, dtype=np.int64))]

"""Image output: NCHW batches in [-1, 1] to an ASCII PPM/PGM (no dependencies) or a PNG grid (Pillow).

Torch-free: batches may be numpy arrays or torch tensors (converted on the way in), so the
deployment runtime writes images without importing torch. Files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from zoo.files import atomic_write

__all__ = ["to_uint8", "write_ppm", "save_grid"]


def _as_batch(batch: Any) -> np.ndarray:
    if hasattr(batch, "detach"):  # a torch tensor, without importing torch
        batch = batch.detach().cpu().numpy()
    arr = np.asarray(batch)
    if arr.ndim != 4:
        raise ValueError(f"expected an NCHW batch of shape (B, C, H, W); got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[2] < 1 or arr.shape[3] < 1:
        raise ValueError(f"expected a non-empty batch; got shape {arr.shape}")
    if arr.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 (grayscale) or 3 (RGB) channels; got {arr.shape[1]} in shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected floating-point values in [-1, 1]; got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"the batch holds {int((~np.isfinite(arr)).sum())} non-finite values (NaN or inf)")
    return arr


def to_uint8(batch: Any) -> np.ndarray:
    """(B, C, H, W) floats in [-1, 1] -> (B, H, W, C) uint8; values outside are clipped."""
    arr = _as_batch(batch)
    return np.round((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def write_ppm(path: str | os.PathLike, batch: Any) -> Path:
    """Write the first image of a batch as ASCII PPM (P3, RGB) or PGM (P2, C=1)."""
    img = to_uint8(batch)[0]  # (H, W, C)
    h, w, c = img.shape
    magic = "P3" if c == 3 else "P2"
    rows = [" ".join(map(str, row.reshape(-1).tolist())) for row in img]
    text = f"{magic}\n{w} {h}\n255\n" + "\n".join(rows) + "\n"
    return atomic_write(path, text.encode("ascii"))


def save_grid(path: str | os.PathLike, batch: Any, nrow: int | None = None, padding: int = 2) -> Path:
    """Tile a whole batch into one PNG (or any format Pillow infers from the suffix).

    Args:
        nrow: images per row; default ceil(sqrt(B)).
        padding: pixels of black between images.
    """
    from PIL import Image

    imgs = to_uint8(batch)  # (B, H, W, C)
    b, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow={nrow!r} and padding={padding!r} are invalid: expected nrow >= 1 and padding >= 0")
    ncol_rows = math.ceil(b / nrow)
    grid = np.zeros((ncol_rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
    for i, img in enumerate(imgs):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = img
    pil = Image.fromarray(grid[..., 0] if c == 1 else grid)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot infer an image format from {str(path)!r}: use a suffix such as .png")
    buf = io.BytesIO()
    pil.save(buf, format=fmt)
    return atomic_write(path, buf.getvalue())

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
from zoo.validate import check_int

__all__ = ["to_uint8", "write_ppm", "grid_array", "save_image", "save_grid", "save_side_by_side", "save_labelled_rows"]


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


def grid_array(batch: Any, nrow: int | None = None, padding: int = 2, scale: int = 1, pad_value: int = 0) -> np.ndarray:
    """Tile a batch into one (H, W, C) uint8 array, ``nrow`` images per row, each scaled ``scale`` x (nearest).

    ``pad_value`` (0..255) fills the padding: black by default, grey for images on black backgrounds.
    """
    imgs = to_uint8(batch)  # (B, H, W, C)
    scale = check_int("scale", scale, 1)
    imgs = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
    b, h, w, c = imgs.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow={nrow!r} and padding={padding!r} are invalid: expected nrow >= 1 and padding >= 0")
    ncol_rows = math.ceil(b / nrow)
    grid = np.full((ncol_rows * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    for i, img in enumerate(imgs):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = img
    return grid


def save_image(path: str | os.PathLike, grid: np.ndarray) -> Path:
    """Write an (H, W, 1 or 3) uint8 array atomically, in the format Pillow infers from the suffix."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot infer an image format from {str(path)!r}: use a suffix such as .png")
    buf = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buf, format=fmt)  # "L" or "RGB"
    return atomic_write(path, buf.getvalue())


def save_grid(
    path: str | os.PathLike, batch: Any, nrow: int | None = None, padding: int = 2, scale: int = 1, pad_value: int = 0
) -> Path:
    """Tile a whole batch into one PNG (or any format Pillow infers from the suffix).

    Args:
        nrow: images per row; default ceil(sqrt(B)).
        padding: pixels of black between images.
        scale: enlarge every image this many times (nearest neighbour), for small images.
        pad_value: grey level (0..255) of the padding.
    """
    return save_image(path, grid_array(batch, nrow, padding, scale, pad_value))


def save_side_by_side(path: str | os.PathLike, batches: list[Any], scale: int = 1, gap: int = 16, pad_value: int = 96) -> Path:
    """Grids of several batches side by side (e.g. samples | real images), ``gap`` white pixels apart.

    Images are separated by grey (``pad_value``) lines, visible on black and white backgrounds alike.
    """
    return save_image(path, _side_by_side([grid_array(b, scale=scale, pad_value=pad_value) for b in batches], gap))


def _side_by_side(grids: list[np.ndarray], gap: int) -> np.ndarray:
    """(H, W, C) uint8 grids in one array, top-aligned, ``gap`` white columns between them."""
    h = max(g.shape[0] for g in grids)
    c = max(g.shape[2] for g in grids)
    parts = []
    for i, g in enumerate(grids):
        g = np.broadcast_to(g, (*g.shape[:2], c)) if g.shape[2] != c else g
        parts.append(np.pad(g, ((0, h - g.shape[0]), (0, 0), (0, 0))))
        if i + 1 < len(grids):
            parts.append(np.full((h, gap, c), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def save_labelled_rows(path: str | os.PathLike, batch: Any, names: list[str], scale: int = 1, pad_value: int = 96,
                       beside: Any = None, gap: int = 16) -> Path:
    """One row per name: ``batch`` holds ``len(names)`` rows of equally many images, each row's name at its left.

    ``beside``: another batch of ``len(names)`` rows (e.g. real images of each row's class), drawn to
    the right, ``gap`` white pixels apart.
    """
    from PIL import Image, ImageDraw

    grids = []
    for b in [batch] if beside is None else [batch, beside]:
        per_row, rem = divmod(len(b), max(len(names), 1))
        if not names or rem or per_row < 1:
            raise ValueError(f"{len(b)} images cannot fill {len(names)} rows evenly")
        grids.append(grid_array(b, nrow=per_row, scale=scale, pad_value=pad_value))
    grid = _side_by_side(grids, gap)
    rgb = np.broadcast_to(grid, (*grid.shape[:2], 3)) if grid.shape[2] == 1 else grid
    font = _label_font()
    names = [_drawable(n, font) for n in names]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = 8 + max(int(draw.textlength(n, font=font)) for n in names)
    canvas = Image.new("RGB", (margin + rgb.shape[1], rgb.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = (rgb.shape[0] - 2) / len(names)
    for i, name in enumerate(names):
        draw.text((4, int(2 + (i + 0.5) * row_h) - 6), name, fill=(0, 0, 0), font=font)
    return save_image(path, np.asarray(canvas))


# Scalable fonts with the accented Latin, Greek and Cyrillic letters of class names, found by name in the system's
# font directories; Pillow's own bitmap font (ASCII only) where none is installed.
_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "Helvetica.ttc")


def _label_font() -> Any:
    from PIL import ImageFont

    for name in _FONTS:
        try:
            return ImageFont.truetype(name, 11)
        except OSError:
            continue
    return ImageFont.load_default()


def _drawable(name: str, font: Any) -> str:
    """``name`` with each character the font has no glyph for replaced by its unaccented letter, or '?' (never a box)."""
    import unicodedata

    missing = font.getmask("\U0010fffd")  # a private-use code point: the font's "no glyph" box

    def has(ch: str) -> bool:
        if ch.isascii():
            return True
        if not hasattr(font, "getmask2"):  # the bitmap font: ASCII only
            return False
        mask = font.getmask(ch)
        return mask.size != missing.size or bytes(mask) != bytes(missing)

    out = []
    for ch in name:
        if not has(ch):
            base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            ch = base if base else "?"
        out.append(ch)
    return "".join(out)

"""Image folders: every readable image under a directory, decoded by mode to [-1, 1]; subfolders are classes."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from zoo.training.data.base import ImageDataset

__all__ = ["ImageFolder", "IMAGE_EXTENSIONS", "MAX_PIXELS"]

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # larger images (or decompression bombs) are skipped before decoding


class ImageFolder(ImageDataset):
    """Images under ``root`` (flat, or ``root/<class>/*``: then labelled, classes in sorted order), RGB,
    resized and centre-cropped to ``size``.

    Every image is decoded once at scan time (EXIF orientation applied): files any decoder step
    fails on, truncated, empty or enormous files, files of an unknown pixel range and unreadable
    folders are skipped with counts in the log (``skipped``, naming the first few files);
    a folder with no usable image is an error naming it. Pixels are decoded by mode to [-1, 1]:
    8-bit modes as 0..255, 16-bit grey (``I;16``, or ``I`` within 0..65535) as 0..65535, float
    (``F``) as 0..1 (or 0..255 when its values exceed 1), grey replicated to RGB, and transparency
    (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) composited over white.
    """

    def __init__(self, root: str | os.PathLike, size: int, max_pixels: int = MAX_PIXELS):
        self.root, self.size, self.max_pixels = Path(root), size, max_pixels
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        self.skipped = {"unreadable": 0, "empty": 0, "too large": 0, "unknown pixel range": 0, "unreadable folders": 0}
        self.files: list[Path] = []
        candidates = self._candidates()
        if len(candidates) >= 1000:  # decoding every image takes a while: say so
            from tqdm.auto import tqdm

            candidates = tqdm(candidates, desc=f"checking {self.root.name}", unit="image", leave=False)
        skipped_files: list[str] = []
        for p in candidates:
            try:
                self._decode(p)
            except _Skip as e:
                self.skipped[e.reason] += 1
                skipped_files.append(f"{p.name} ({e.reason}: {str(e)[:80]})")
                log.info("%s: skipped (%s): %s", p, e.reason, e)
            else:
                self.files.append(p)
        if any(self.skipped.values()):
            first = "; ".join(skipped_files[:3]) + (", ..." if len(skipped_files) > 3 else "")
            log.warning("%s: %d usable images; skipped %s, first: %s", self.root, len(self.files),
                        ", ".join(f"{v} {k}" for k, v in self.skipped.items() if v), first)
        if not self.files:
            raise ValueError(f"image folder {str(self.root)!r} has no usable image ({', '.join(IMAGE_EXTENSIONS)})")
        self._find_classes()

    def _find_classes(self) -> None:
        """One class per subfolder of ``root`` (sorted names, as torchvision's ``ImageFolder``), when every image is in one."""
        tops = [p.relative_to(self.root).parts for p in self.files]
        if any(len(parts) < 2 for parts in tops):
            return  # images directly under root: no classes (a flat folder stays unconditional)
        self.class_names = tuple(sorted({parts[0] for parts in tops}))
        if len(self.class_names) < 2:
            self.class_names = ()
            return
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = np.asarray([index[parts[0]] for parts in tops], np.int64)
        self.num_classes = len(self.class_names)

    def _candidates(self) -> list[Path]:
        def unreadable(e: OSError) -> None:
            self.skipped["unreadable folders"] += 1
            log.info("%s: skipped folder: %s", e.filename, e.strerror)

        found = []
        for folder, dirs, names in os.walk(self.root, onerror=unreadable):
            dirs.sort()
            found += [Path(folder, n) for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
        return sorted(p for p in found if p.is_file())

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            return self._decode(self.files[i])
        except _Skip as e:  # changed on disk since the scan
            raise ValueError(f"cannot decode image {str(self.files[i])!r}: {e}") from None

    def _decode(self, p: Path) -> torch.Tensor:
        from PIL import Image, ImageOps

        try:
            with Image.open(p) as im:
                w, h = im.size  # the header only: enormous images are refused before decoding
                if w == 0 or h == 0:
                    raise _Skip("empty", f"{w}x{h} pixels")
                if w * h > self.max_pixels:
                    raise _Skip("too large", f"{w}x{h} pixels > {self.max_pixels}")
                im.load()
                im = ImageOps.exif_transpose(im)  # as a viewer shows it: EXIF orientation applied (a loaded copy)
        except Image.DecompressionBombError as e:  # beyond Pillow's own limit, refused before the header is read out
            raise _Skip("too large", str(e)) from None
        except _DECODER_ERRORS as e:  # a bad file: skipped and counted; anything else is a bug, and raised
            raise _Skip("unreadable", f"{type(e).__name__}: {e}") from None
        return torch.from_numpy(_resize_crop(_unit_range(im, p), self.size) * 2.0 - 1.0)


# What Pillow's decoders raise on a damaged or foreign file (UnidentifiedImageError and "truncated" are OSErrors;
# the PNG and JPEG plugins raise SyntaxError on broken headers, struct.error and EOFError on short ones).
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, MemoryError)


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _unit_range(im, path: Path) -> np.ndarray:
    """A decoded PIL image -> (H, W, 3) float32 in [0, 1], by mode (see ``ImageFolder``)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if not np.isfinite(a).all():
            raise _Skip("unknown pixel range", f"mode {im.mode} with non-finite pixels")
        lo, hi = float(a.min()), float(a.max())
        if im.mode == "F":
            scale = 1.0 if lo >= 0 and hi <= 1 else 255.0 if lo >= 0 and hi <= 255 else None
        else:
            scale = 65535.0 if lo >= 0 and hi <= 65535 else None
        if scale is None:
            raise _Skip("unknown pixel range", f"mode {im.mode} with pixels in {lo:g}..{hi:g}")
        return np.repeat((a / scale).astype(np.float32)[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _resize_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) -> (3, size, size): the short side resized to ``size`` (bicubic), then centre-cropped."""
    from PIL import Image

    h, w = arr.shape[:2]
    s = size / min(w, h)
    new = (max(size, round(w * s)), max(size, round(h * s)))
    if new[0] * new[1] > MAX_PIXELS:  # a 4,000,000 x 1 strip would be resized to 128,000,000 x 32 first
        raise _Skip("too large", f"{w}x{h} pixels would be resized to {new[0]}x{new[1]} > {MAX_PIXELS}")
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    box = (left, top, left + size, top + size)
    chans = [np.asarray(Image.fromarray(arr[:, :, c]).resize(new, Image.Resampling.BICUBIC).crop(box))
             for c in range(3)]
    return np.clip(np.stack(chans), 0.0, 1.0)  # bicubic overshoots at edges

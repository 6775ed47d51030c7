"""IDX files (MNIST, Fashion-MNIST): images and, where present, their labels.

Format: http://yann.lecun.com/exdb/mnist/ (the "FILE FORMATS" section).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from zoo.configs import MAX_CLASSES  # a label beyond it is a corrupt file, not a class
from zoo.resources import check_fits
from zoo.training.data.base import _InMemoryImages, _grey_images

__all__ = ["IdxImages", "read_idx", "MAX_IDX_BYTES"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_BYTES = 2 << 30  # 2 GiB of payload: far above MNIST's 47 MB, far below this machine's memory


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip or not): magic ``0 0 dtype ndim``, big-endian int32 dims, then the data.

    The header is validated and the payload must have exactly the size it declares; a gzip stream
    is never decompressed past that size. Raises ValueError naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES or not 1 <= head[3] <= 4:
                raise ValueError(f"{str(path)!r} is not an IDX file: its magic is {head.hex() or 'empty'}, expected "
                                 f"00 00 <dtype in {sorted(hex(k) for k in _IDX_DTYPES)}> <ndim 1..4>")
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            dims_raw = f.read(4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                raise ValueError(f"{str(path)!r}: the IDX header is truncated")
            dims = tuple(int(v) for v in np.frombuffer(dims_raw, ">u4"))
            size = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if size > max_bytes:
                raise ValueError(f"{str(path)!r} declares {dims} = {size} bytes, over the {max_bytes}-byte limit")
            payload = f.read(size + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{str(path)!r}: cannot read the IDX data: {e}") from None
    if len(payload) != size:
        what = "truncated" if len(payload) < size else "longer than its header says"
        raise ValueError(f"{str(path)!r} is {what}: the header declares {dims} ({size} bytes of data)")
    return np.frombuffer(payload, dtype).reshape(dims).astype(dtype.newbyteorder("="))


class IdxImages(_InMemoryImages):
    """Greyscale images from IDX files: MNIST, Fashion-MNIST and their kin.

    ``path`` is a directory holding ``train-images-idx3-ubyte[.gz]`` and ``t10k-images-idx3-ubyte[.gz]``
    (the split is ``train``), or one images file. Labels come from the matching ``*-labels-idx1-ubyte``
    file when it is there. Pixel values 0..255 map to [-1, 1]; other sizes are resized.
    """

    channels = 1

    def __init__(self, path: str | os.PathLike, size: int, train: bool = True):
        images = self._find(Path(path), train)
        arr = read_idx(images)
        if arr.ndim != 3 or arr.dtype != np.uint8 or min(arr.shape) < 1:
            raise ValueError(f"{str(images)!r} holds {arr.dtype} of shape {arr.shape}: expected uint8 images (N, H, W), "
                             "at least one image of at least 1 x 1 pixels")
        self.size, self.path = size, images
        n = arr.shape[0]
        check_fits(12 * arr.size + 8 * n * size * size,  # the float64 copy, its float32 copy, the resized images
                   f"{n:,} IDX images of {arr.shape[1]}x{arr.shape[2]} converted to float", "use a smaller file or --size")
        self.data = _grey_images(arr / 255.0, size)
        labels_path = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
        if labels_path != images and labels_path.is_file():
            labels = read_idx(labels_path)
            if labels.shape != (len(arr),):
                raise ValueError(f"{str(labels_path)!r} has shape {labels.shape}: expected one label per image ({len(arr)})")
            if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= MAX_CLASSES:
                raise ValueError(f"{str(labels_path)!r} holds labels {labels.min()}..{labels.max()} ({labels.dtype}): "
                                 f"expected integers in 0..{MAX_CLASSES - 1}")
            self.labels = labels.astype(np.int64)
            self.num_classes = int(self.labels.max()) + 1

    @staticmethod
    def _find(path: Path, train: bool) -> Path:
        if path.is_file():
            sibling = path.with_name(path.name.replace("train-", "t10k-", 1))
            return sibling if not train and path.name.startswith("train-") and sibling.is_file() else path
        if not path.is_dir():
            raise FileNotFoundError(f"IDX path {str(path)!r} does not exist")
        stem = "train" if train else "t10k"
        for name in (f"{stem}-images-idx3-ubyte", f"{stem}-images-idx3-ubyte.gz", f"{stem}-images.idx3-ubyte"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{str(path)!r} has no {stem}-images-idx3-ubyte[.gz] (the MNIST file names)")

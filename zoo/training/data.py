"""Training data: synthetic shapes, scikit-learn's digits, IDX files (MNIST format), CIFAR-10 and image folders.

The caller picks the source (``open_dataset("synthetic" | "digits" | "idx:PATH" | "cifar10:PATH" |
"folder:PATH")``); models never know. Every dataset yields float32 (C, H, W) tensors in [-1, 1] and
serves whole batches by index, so the trainer's data order is a pure function of (seed, step).
Sources with classes also serve labels (``batch_labels``), which the quality metric's classifier
learns (``zoo.training.metrics``). CIFAR-10 format and MD5 sums: https://www.cs.toronto.edu/~kriz/cifar.html;
IDX format: http://yann.lecun.com/exdb/mnist/ (the "FILE FORMATS" section).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from zoo.configs import MAX_CLASSES  # a label beyond it is a corrupt file, not a class
from zoo.resources import check_fits
from zoo.validate import check_int

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

log = logging.getLogger(__name__)



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


# --- synthetic ---------------------------------------------------------------------------------

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


# --- CIFAR-10 ------------------------------------------------------------------------------------

CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"


class UnsafePickleError(ValueError):
    """A pickle asked for something outside the CIFAR-10 format (a function, a class): refused."""


MAX_CIFAR_FILE_BYTES = 256 << 20  # a CIFAR-10 batch is 31 MB; anything far larger is not one


def _latin1_bytes(obj: object, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle bytes at protocol 2 (latin-1 of a str), and nothing else.

    The real ``_codecs.encode`` runs any codec (``hex_codec``, ``zlib_codec``...): chained, a tiny
    pickle expands to gigabytes. Only the latin-1 form, of a bounded string, is accepted.
    """
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(obj, str):
        raise UnsafePickleError(f"refusing _codecs.encode(..., {encoding!r}): only the latin-1 form of bytes is allowed")
    if len(obj) > MAX_CIFAR_FILE_BYTES:
        raise UnsafePickleError(f"refusing a {len(obj)}-character string: larger than any CIFAR-10 batch")
    return obj.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Allows exactly what a CIFAR-10 batch needs: containers, bytes/str and numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2: replaced by _latin1_bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}: only numpy arrays, containers and strings are allowed")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def restricted_load(data: bytes, what: str = "pickle") -> object:
    """Unpickle CIFAR-format data with the allow-list above; anything else raises UnsafePickleError."""
    if len(data) > MAX_CIFAR_FILE_BYTES:
        raise ValueError(f"{what} has {len(data)} bytes, more than any CIFAR-10 batch ({MAX_CIFAR_FILE_BYTES} at most)")
    try:
        return _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{what}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{what} is not a valid CIFAR-10 pickle: {e}") from None


def _key(d: dict, name: str):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise ValueError(f"CIFAR-10 batch has no {name!r} entry (keys: {sorted(map(str, d))})")


def _read_archive(path: Path, names: list[str]) -> list[bytes]:
    """The named batches from the CIFAR-10 ``.tar.gz``, each a bounded regular file; nothing is extracted to disk."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {}
            for m in tar.getmembers():
                if Path(m.name).name not in names:
                    continue
                if m.name.startswith("/") or ".." in Path(m.name).parts or not m.isfile():
                    kind = "a link" if (m.issym() or m.islnk()) else "not a regular file" if not m.isfile() else "outside the archive"
                    raise ValueError(f"archive {str(path)!r}: member {m.name!r} is {kind}; refused")
                if m.size > MAX_CIFAR_FILE_BYTES:
                    raise ValueError(f"archive {str(path)!r}: member {m.name!r} has {m.size} bytes, more than any "
                                     f"CIFAR-10 batch ({MAX_CIFAR_FILE_BYTES} at most); refused")
                members[Path(m.name).name] = m
            missing = [n for n in names if n not in members]
            if missing:
                raise FileNotFoundError(f"archive {str(path)!r} lacks {missing}")
            return [tar.extractfile(members[n]).read() for n in names]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{str(path)!r} is not a readable .tar.gz archive (truncated or corrupt): {e}") from None


class Cifar10(ImageDataset):
    """CIFAR-10 from a directory of python-format batches or the distributed ``.tar.gz``.

    Args:
        path: the ``cifar-10-batches-py`` directory (or its parent), or ``cifar-10-python.tar.gz``.
        train: the five training batches (50,000 images) or ``test_batch`` (10,000).
        verify_md5: check each file against the published MD5 sums.
    """

    size = 32
    num_classes = 10
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(self, path: str | os.PathLike, train: bool = True, verify_md5: bool = False):
        path = Path(path)
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        blobs = self._read(path, names, verify_md5)
        data, labels = [], []
        for name, blob in zip(names, blobs):
            d = restricted_load(blob, f"{path}/{name}")
            if not isinstance(d, dict):
                raise ValueError(f"{path}/{name} is not a CIFAR-10 batch (a dict was expected)")
            arr = np.asarray(_key(d, "data"))
            if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{path}/{name}: 'data' must be uint8 (N, 3072); got {arr.dtype} {arr.shape}")
            batch_labels = np.asarray(_key(d, "labels"))
            if batch_labels.shape != (len(arr),) or not np.issubdtype(batch_labels.dtype, np.integer) or (
                    len(arr) and not 0 <= batch_labels.min() <= batch_labels.max() < self.num_classes):
                raise ValueError(f"{path}/{name}: 'labels' must be {len(arr)} integers in 0..{self.num_classes - 1}, one per "
                                 f"image; got {batch_labels.dtype} {batch_labels.shape}")
            data.append(arr.reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch_labels)
        self.data = np.concatenate(data)  # (N, 3, 32, 32) uint8
        self.labels = np.asarray(labels, np.int64)

    @staticmethod
    def _read(path: Path, names: list[str], verify_md5: bool) -> list[bytes]:
        if not path.exists():
            raise FileNotFoundError(f"CIFAR-10 path {str(path)!r} does not exist")
        if path.is_file():
            if not path.name.endswith((".tar.gz", ".tgz")):
                raise ValueError(f"{str(path)!r} is neither a CIFAR-10 directory nor the cifar-10-python.tar.gz archive")
            if verify_md5:
                _check_md5(path.read_bytes(), CIFAR10_ARCHIVE_MD5, str(path))
            return _read_archive(path, names)
        root = path / CIFAR10_DIR if (path / CIFAR10_DIR).is_dir() else path
        blobs = []
        for n in names:
            f = root / n
            if not f.is_file():
                raise FileNotFoundError(f"CIFAR-10 file {str(f)!r} is missing (expected {names} in {str(root)!r})")
            if f.stat().st_size > MAX_CIFAR_FILE_BYTES:  # before reading: a sparse 12 GB file is not read whole
                raise ValueError(f"{str(f)!r} has {f.stat().st_size:,} bytes: a CIFAR-10 batch is 31 MB (limit "
                                 f"{MAX_CIFAR_FILE_BYTES:,})")
            blob = f.read_bytes()
            if verify_md5:
                _check_md5(blob, CIFAR10_MD5[n], str(f))
            blobs.append(blob)
        return blobs

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch([i])[0]

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.data[np.asarray(indices)].astype(np.float32) / 127.5 - 1.0)


def _check_md5(blob: bytes, expected: str, what: str) -> None:
    got = hashlib.md5(blob).hexdigest()
    if got != expected:
        raise ValueError(f"{what} has MD5 {got}, the published CIFAR-10 file has {expected}")


class _InMemoryImages(ImageDataset):
    """A dataset held as one (N, C, size, size) float32 tensor ``self.data``."""

    data: torch.Tensor

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        return self.data[torch.as_tensor(np.asarray(indices, dtype=np.int64))]


# --- scikit-learn's digits -------------------------------------------------------------------------

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


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------------

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


# --- image folders -------------------------------------------------------------------------------

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

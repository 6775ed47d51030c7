"""CIFAR-10 from its published Python archive or directory, MD5-checked, read with the safe unpickler.

Format and MD5 sums: https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from zoo.training.data.base import ImageDataset
from zoo.training.data.unpickle import MAX_CIFAR_FILE_BYTES, restricted_load

__all__ = ["Cifar10", "MAX_CIFAR_FILE_BYTES"]

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

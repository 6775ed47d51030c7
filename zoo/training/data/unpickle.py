"""The safe unpickler: CIFAR-10's pickles read with nothing but their own format (no function, no class)."""

from __future__ import annotations

import io
import pickle

import numpy as np

__all__ = ["UnsafePickleError", "restricted_load", "MAX_CIFAR_FILE_BYTES"]

MAX_CIFAR_FILE_BYTES = 256 << 20  # a CIFAR-10 batch is 31 MB; anything far larger is not one (nor read whole)


class UnsafePickleError(ValueError):
    """A pickle asked for something outside the CIFAR-10 format (a function, a class): refused."""


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

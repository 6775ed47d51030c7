"""The diffzoo header of a safetensors weights file: the model's name and config, its schedule, its data.

torch-free, and the only reader of that header: ``zoo.weights`` writes and loads weights through
it, and the bundle format (``export.format.manifest``) checks a manifest's settings against it.
A safetensors file is 8 bytes of little-endian header length, then the JSON header, whose
``__metadata__`` holds string values; diffzoo's is JSON under the key ``"diffzoo"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["HEADER_KEY", "MAX_HEADER_BYTES", "read_header", "read_weights_metadata", "check_metadata"]

HEADER_KEY = "diffzoo"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


def read_header(f: BinaryIO, name: str) -> tuple[dict[str, Any], int]:
    """The JSON header of the safetensors file open as ``f`` and where its tensor data starts (tensor offsets count from
    there); ``ValueError`` naming ``name`` for anything that is not one."""
    try:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= MAX_HEADER_BYTES:
            raise ValueError(f"a header of {n} bytes")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{name!r} is not a safetensors weights file: {e}") from None
    return header, 8 + n


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The diffzoo metadata of a weights file, read from its header only; ``ValueError`` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            header, _ = read_header(f, str(path))
    except OSError as e:
        raise ValueError(f"{str(path)!r} is not a safetensors weights file: {e}") from None
    meta = header.get("__metadata__")
    raw = meta.get(HEADER_KEY) if isinstance(meta, dict) else None
    if not isinstance(raw, str):
        raise ValueError(f"{str(path)!r} has no diffzoo metadata: it was not written by diffzoo's save_weights")
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{str(path)!r}: its diffzoo metadata is not valid JSON ({e})") from None
    check_metadata(parsed, path)
    return parsed


def check_metadata(meta: Any, path: Path) -> None:
    """The keys a reader relies on, with their types: a bad header is one ValueError naming the key."""
    wanted = (("model", dict), ("model.name", str), ("model.config", dict), ("schedule", dict))
    for key, kind in wanted:
        obj = meta
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise ValueError(f"{str(path)!r}: its diffzoo metadata lacks {key!r} (not written by save_weights, or edited)")
            obj = obj[part]
        if not isinstance(obj, kind):
            raise ValueError(f"{str(path)!r}: its diffzoo metadata has {key} = {obj!r}, expected a {kind.__name__}")

"""diffzoo export: any zoo model to a verified bundle of TorchScript and ONNX graphs with a manifest.

``export.format.manifest`` (hash verification) is torch-free for the runtime; the exporters load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from export.format.manifest import (
    FORMAT_VERSION,
    BundleError,
    BundleFileMissingError,
    BundleHashMismatchError,
    BundleVersionError,
    load_manifest,
)

__all__ = [
    "export_bundle",
    "swap_weights",
    "ExportOptions",
    "Bundle",
    "load_manifest",
    "load_model",
    "ExportVerificationError",
    "BundleError",
    "BundleFileMissingError",
    "BundleHashMismatchError",
    "BundleVersionError",
    "FORMAT_VERSION",
    "derived_atol",
    "reference_outputs",
]

_LAZY = {
    "export_bundle": "export.bundle",
    "swap_weights": "export.bundle",
    "ExportOptions": "export.bundle",
    "Bundle": "export.bundle",
    "load_model": "export.bundle",
    "ExportVerificationError": "export.verify",
    "derived_atol": "export.verify",
    "reference_outputs": "export.bundle",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")

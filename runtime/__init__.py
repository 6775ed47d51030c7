"""diffzoo runtime: sample from an exported bundle with onnxruntime (CUDA provider, CPU fallback).

The deployment core (``runtime.sampler``, ``runtime.providers``, ``runtime.noise``, ``runtime.requests``: the request and its plan)
imports numpy and onnxruntime only. The applications (CLI, parity, eval, demo, bench) live in
``runtime.apps``; ``runtime.parity`` (the eager torch comparison) loads from there on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from runtime.providers import (
    CudaOptions,
    ProviderUnavailableError,
    cuda_unavailable_reason,
)
from runtime.requests import MODES, PRECISIONS, Conditioning, Plan, SampleRequest
from runtime.sampler import Sampler, load

__all__ = ["load", "Sampler", "MODES", "PRECISIONS", "CudaOptions", "ProviderUnavailableError", "cuda_unavailable_reason",
           "parity", "ParityReport", "SampleRequest", "Plan", "Conditioning"]

_LAZY = {"parity": "runtime.apps.parity", "ParityReport": "runtime.apps.parity"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # torch-based: imported only when asked for
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")

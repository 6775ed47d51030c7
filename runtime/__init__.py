"""diffzoo runtime: sample from an exported bundle with onnxruntime (CUDA provider, CPU fallback).

The sampling path imports numpy, onnxruntime and pillow only; ``parity`` (the eager torch
comparison) and the CLI's training/export commands import torch when they are called.
"""

from __future__ import annotations

from runtime.providers import CudaOptions, ProviderUnavailableError, cuda_unavailable_reason
from runtime.eager_parity import ParityReport, parity
from runtime.sampler import MODES, PRECISIONS, Sampler, check_settings, load

__all__ = ["load", "Sampler", "MODES", "PRECISIONS", "CudaOptions", "ProviderUnavailableError", "cuda_unavailable_reason", "parity", "ParityReport",
           "check_settings"]

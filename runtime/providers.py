"""Execution providers: which ones this machine can really use, why CUDA cannot, and the options that matter.

onnxruntime lists ``CUDAExecutionProvider`` as available whenever the GPU build is installed, and
silently falls back to the CPU when the CUDA libraries or the GPU are missing. This module finds
the exact reason before a session is created, and checks the providers a session really got.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import onnxruntime as ort

__all__ = [
    "PROVIDERS",
    "Provider",
    "CudaOptions",
    "ProviderUnavailableError",
    "cuda_unavailable_reason",
    "resolve_provider",
    "session_providers",
]

log = logging.getLogger(__name__)

Provider = Literal["auto", "cuda", "cpu"]
PROVIDERS: tuple[str, ...] = get_args(Provider)  # the names written once, in the type
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider cannot run here; the message says why."""


@dataclass(frozen=True)
class CudaOptions:
    """The CUDA execution provider options that matter for sampling."""

    device_id: int = 0  # which GPU
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # benchmark conv algorithms once per shape (best for long runs)
    tf32: bool = True  # TF32 tensor cores for fp32 convs: ~1e-3 relative error; parity runs turn it off
    gpu_mem_limit: int | None = None  # bytes for the arena; None = no limit
    cuda_graph: bool = False  # capture the fused step as a CUDA graph (fixed shapes, IO binding)

    def __post_init__(self) -> None:
        if self.cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
            raise ValueError(
                f"cudnn_conv_algo_search={self.cudnn_conv_algo_search!r} is invalid: expected one of {list(CONV_ALGO_SEARCH)}"
            )
        if self.device_id < 0 or (self.gpu_mem_limit is not None and self.gpu_mem_limit <= 0):
            raise ValueError(f"device_id={self.device_id} and gpu_mem_limit={self.gpu_mem_limit} must be >= 0 and > 0")

    def provider_options(self, cuda_graph: bool | None = None) -> dict[str, str]:
        opts = {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "use_tf32": "1" if self.tf32 else "0",
            "enable_cuda_graph": "1" if (self.cuda_graph if cuda_graph is None else cuda_graph) else "0",
        }
        if self.gpu_mem_limit is not None:
            opts["gpu_mem_limit"] = str(self.gpu_mem_limit)
        return opts


_preloaded = False
_warned: set[str] = set()


def _preload() -> None:
    """Load the CUDA/cuDNN libraries shipped as pip packages, where onnxruntime offers it (>= 1.21)."""
    global _preloaded
    if not _preloaded and hasattr(ort, "preload_dlls"):
        out = io.StringIO()  # it prints every library it cannot find; the reason check below says it once
        error = ""
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                ort.preload_dlls()
            except OSError as e:
                error = f" ({e})"
        log.debug("onnxruntime.preload_dlls(): %s%s", out.getvalue().strip(), error)
    _preloaded = True


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA provider can load here, else the exact reason it cannot."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no CUDA provider: install onnxruntime-gpu"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver: libcuda.so.1 cannot be loaded (no GPU visible on this machine)"
    _preload()
    lib = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    if os.path.exists(lib):
        try:
            ctypes.CDLL(lib)
        except OSError as e:
            return f"onnxruntime's CUDA provider cannot load: {e}"
    return None


def resolve_provider(provider: str, strict: bool = False) -> str:
    """Map ``auto``/``cuda``/``cpu`` to ``"cuda"`` or ``"cpu"``; auto falls back with one warning."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}: expected one of {list(PROVIDERS)}")
    if provider == "cpu":
        return "cpu"
    reason = cuda_unavailable_reason()
    if reason is None:
        return "cuda"
    if provider == "cuda" or strict:
        raise ProviderUnavailableError(f"CUDA execution provider unavailable: {reason}")
    if reason not in _warned:  # one warning per process and reason, however many bundles are loaded
        _warned.add(reason)
        log.warning("CUDA execution provider unavailable, using the CPU provider: %s", reason)
    return "cpu"


def session_providers(device: str, cuda: CudaOptions, cuda_graph: bool = False) -> list[Any]:
    """The explicit provider list for a session on ``device`` ("cuda" or "cpu")."""
    if device == "cuda":
        return [("CUDAExecutionProvider", cuda.provider_options(cuda_graph)), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]

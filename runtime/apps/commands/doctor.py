"""``diffzoo doctor``: versions, execution providers, and exactly why CUDA cannot load when it cannot."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform
import shutil
import subprocess
import sys

from zoo.validate import install_hint

__all__ = ["diagnose", "register", "run"]


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _gpu_names() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def diagnose() -> list[tuple[str, str]]:
    """(label, value) rows describing python, onnxruntime, torch, providers and GPUs."""
    import onnxruntime as ort

    from runtime.providers import cuda_unavailable_reason

    gpu_build = _version("onnxruntime-gpu")
    rows = [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("onnxruntime", f"{ort.__version__} ({'GPU build: onnxruntime-gpu ' + gpu_build if gpu_build else 'CPU-only build'})"),
        ("torch", _version("torch") or f"not installed (not needed for sample, serve, request: {install_hint('torch')} "
                                       "for the rest)"),
        ("providers available", ", ".join(ort.get_available_providers())),
    ]
    reason = cuda_unavailable_reason()
    loadable = ["CPUExecutionProvider"] + (["CUDAExecutionProvider"] if reason is None else [])
    rows.append(("providers loadable", ", ".join(loadable)))
    rows.append(("CUDA", "loads" if reason is None else f"unavailable: {reason}"))
    from runtime.apps.serve.server import triton_unavailable_reason

    triton = triton_unavailable_reason()
    rows.append(("triton server", f"nvidia-pytriton {_version('nvidia-pytriton')} (diffzoo serve)" if triton is None
                 else f"unavailable: {triton}"))
    gpus = _gpu_names()
    rows.append(("GPU", ", ".join(gpus) if gpus else "none visible"))
    return rows


def register(sub) -> None:
    p = sub.add_parser("doctor", help="versions, execution providers and why CUDA does or does not load")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = diagnose()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0

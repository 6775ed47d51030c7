"""What every bench measures with: the timing harness, peak memory, the machine, FLOPs and the matmul rate, step noise.

Round-robin repeats after one warm-up each (``time_backends``), the process's peak RSS, the CPU's
instruction set (``has_bf16``, ``int8_ceiling``), a model's direct-convolution FLOPs and the fp32
matrix-multiply rate measured in the same run: the yardsticks of ``speed``, ``peer`` and
``time_to_quality``. Benchmarks measure; nothing here asserts a timing.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zoo.solvers import get_solver

__all__ = ["conv_flops", "matmul_gflops", "peak_rss_mb", "machine", "step_noise", "time_backends", "cpu_flags", "has_bf16",
           "int8_ceiling"]


def conv_flops(model, height: int, width: int) -> int:
    """Direct-convolution FLOPs of one forward pass on one image: 2 * Cin/groups * Cout * k*k * H_out * W_out per conv.

    Each convolution counts at the size it really runs at (a U-Net's lower levels are smaller), read
    from one forward pass on a (1, C, H, W) input at t = 0 (attention and linear layers not counted).
    """
    import torch

    total = 0

    def count(m, _inputs, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * m.in_channels // m.groups * m.out_channels * kh * kw * out.shape[-2] * out.shape[-1]

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, model.config.channels, height, width), torch.zeros(1, dtype=torch.int64))
    finally:
        for h in hooks:
            h.remove()
    return total


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 matrix-multiply rate (GFLOP/s) at ``threads`` threads.

    The best of torch's and numpy's BLAS, best of ``repeats``: the rate the hardware gives a
    well-tuned kernel, which is what "fraction of the machine" is measured against. numpy's BLAS
    uses every core, so it only takes part when ``threads`` is the machine's core count.
    """
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    kernels = [lambda: torch.mm(a, b)] + ([lambda: an @ bn] if threads >= (os.cpu_count() or 1) else [])
    best = float("inf")
    for fn in kernels:
        fn()
        best = min(best, *(_timed(fn) for _ in range(repeats)))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def step_noise(solver: str, steps: int, x_T: np.ndarray, seed: int) -> np.ndarray | None:
    """The per-step noise (S, B, C, H, W) every backend of a bench is given for a solver that draws noise (None
    otherwise): one draw from the bench's seed, made before timing, so that every backend computes the same images."""
    if not get_solver(solver).stochastic(0.0):
        return None
    return np.random.default_rng([seed, 1]).standard_normal((steps, *x_T.shape), dtype=np.float32)


def time_backends(backends: dict[str, Callable[[], np.ndarray]], repeats: int, progress: Callable[[str], None],
                   warm_ups: dict[str, Callable[[], Any]] | None = None):
    """(outputs, warm-up seconds, peak RSS, timed seconds per repeat) of each backend.

    Round-robin repeats: a change of load on this shared machine hits every backend alike,
    instead of whichever backend happened to be running at the time. ``warm_ups``: a cheaper call
    per backend that warms it as well (the same shapes on fewer steps); the outputs are then the
    first timed run's.
    """
    warm, outputs, rss = {}, {}, {}
    for name, fn in backends.items():
        progress(f"{name}: warm-up")
        t0 = time.perf_counter()
        out = (warm_ups or {}).get(name, fn)()  # compilation, session creation, autotuning: not counted
        warm[name] = time.perf_counter() - t0
        if warm_ups is None:
            outputs[name] = out
        rss[name] = peak_rss_mb()
    times: dict[str, list[float]] = {name: [] for name in backends}
    for r in range(repeats):
        progress(f"repeat {r + 1}/{repeats}")
        for name, fn in backends.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            outputs.setdefault(name, out)
    return outputs, warm, rss, times


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def has_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_fp16"})


def int8_ceiling() -> str:
    """What bounds int8 over fp32 on this CPU, from its instruction set."""
    flags = cpu_flags()
    if flags & {"amx_int8", "avx512_vnni", "avx_vnni"}:
        return "this CPU has VNNI/AMX int8 dot products (4x the fp32 FMA rate at the same vector width)"
    if "avx2" in flags:
        return ("this CPU has AVX2 without VNNI: a u8 x s8 product takes two multiply instructions "
                "(vpmaddubsw + vpmaddwd) per 32 MACs against one FMA per 8, so int8 convolution peaks at 2x fp32")
    return "no x86 SIMD int8 path detected"

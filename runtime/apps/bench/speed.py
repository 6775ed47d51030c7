"""``diffzoo bench``: every backend on the same model, inputs and thread count, side by side in one run.

The backends are one table (``backends``: eager torch, ``torch.compile``, TorchScript, bf16
autocast, a plain onnxruntime denoiser under the numpy solver, the runtime's ``step``, ``fused`` and
``loop`` modes, int8, OpenVINO, CUDA variants when a GPU is present); the timing harness and the
machine's yardsticks are ``harness``'s; the table a run prints and its key ratios are ``report``'s.
Reported per backend: images/s, ms per denoising step, ratio to eager, achieved GFLOP/s from the
model's direct-convolution FLOP count and its fraction of the fp32 matrix-multiply rate measured in
the same run, drift from eager fp32, and the process's peak RSS. Benchmarks measure; nothing here
asserts a timing.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.verify import relative_rms
from runtime.apps.bench.backends import (
    CPU_BACKENDS,
    CUDA_BACKENDS,
    INT8_BACKENDS,
    REDUCED_BACKENDS,
    UNGUIDED,
    build_backends,
    step_errors,
    unguided_backends,
)
from runtime.apps.bench.harness import conv_flops, machine, matmul_gflops, time_backends
from runtime.requests import SampleRequest

__all__ = ["BenchConfig", "run_bench", "SWEEPS", "run_sweeps"]


@dataclass(frozen=True)
class BenchConfig:
    model: str = "residual"
    hidden: int = 64
    size: int = 32
    batch: int = 16
    steps: int = SampleRequest.num_steps
    threads: int = 2
    repeats: int = 3
    backends: tuple[str, ...] = CPU_BACKENDS + CUDA_BACKENDS
    seed: int = 0
    checkpoint: str | None = None  # a weights .safetensors: a trained model instead of a random init (model/hidden ignored)
    solver: str = SampleRequest.solver  # every backend runs this solver (zoo.solvers.SOLVERS)
    classes: int = 0  # > 0: the random init is class-conditional with that many classes (a checkpoint knows its own)
    guidance: float = 1.0  # a class-conditional model: every backend samples every class in turn at this w


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Export the model, run every backend ``cfg.repeats`` times after a warm-up, and collect figures."""
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _run_bench(cfg, progress)
    finally:
        torch.set_num_threads(threads_before)  # the thread count is process-global: give it back


def _run_bench(cfg: BenchConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    import torch

    import export
    import zoo

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.checkpoint:
        from zoo.weights import load_weights

        model, schedule, _ = load_weights(cfg.checkpoint)
        cfg = replace(cfg, model=model.name, hidden=model.config.hidden)  # the header names what ran
    else:
        model = zoo.build(cfg.model, hidden=cfg.hidden, **({"num_classes": cfg.classes} if cfg.classes else {})).eval()
        schedule = zoo.linear_schedule(model.config.num_train_timesteps)
    conditional = getattr(model, "conditioning", None) is not None
    c = model.config.channels
    gflops_mm = matmul_gflops(cfg.threads)
    flops_step = conv_flops(model, cfg.size, cfg.size)
    x_T = np.random.default_rng(cfg.seed).standard_normal((cfg.batch, c, cfg.size, cfg.size), dtype=np.float32)
    results: dict[str, Any] = {"config": asdict(cfg), "machine": machine(), "matmul_gflops": gflops_mm,
                               "flops_per_image_step": flops_step, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        progress("exporting the bundle")
        bundle = export.export_bundle(model, Path(tmp) / "bundle", schedule=schedule, example_shape=(c, cfg.size, cfg.size),
                                      int8=any(b in cfg.backends for b in INT8_BACKENDS), solvers=(cfg.solver,),
                                      formats=("onnx", "torchscript") if "torchscript" in cfg.backends else ("onnx",))
        results["export_seconds"] = bundle.seconds
        backends = build_backends(cfg, bundle.path, model, schedule, x_T)
        if conditional:
            backends.update(unguided_backends(cfg, Path(tmp), model, schedule, x_T))
            results["guidance"] = cfg.guidance
        outputs, warm, rss, times = time_backends(backends, cfg.repeats, progress)
        matmul_after = matmul_gflops(cfg.threads)
        results["matmul_gflops_after"] = matmul_after
        errors = step_errors(cfg, bundle.path, model, schedule, x_T, [b for b in backends if b in REDUCED_BACKENDS])
        for name in backends:
            # drift against eager on the same network: the unguided twins have their own
            reference = np.asarray(outputs["eager" + (UNGUIDED if name.endswith(UNGUIDED) else "")], np.float64)
            med = statistics.median(times[name])
            results["backends"][name] = {
                "median_s": med, "min_s": min(times[name]), "max_s": max(times[name]), "warmup_s": warm[name],
                "images_per_s": cfg.batch / med, "ms_per_step": med / cfg.steps * 1e3,
                # a guided backend runs the network on 2B images per step (its -unguided twin on B)
                "gflops": flops_step * cfg.batch * cfg.steps * (2 if conditional and not name.endswith(UNGUIDED) else 1)
                / med / 1e9,
                "drift_vs_eager": float(np.abs(np.asarray(outputs[name], np.float64) - reference).max()),
                "drift_rel_rms": relative_rms(outputs[name], reference),
                **errors.get(name, {}),
                "peak_rss_mb": rss[name],
            }
    eager = results["backends"]["eager"]["median_s"]
    for r in results["backends"].values():
        r["vs_eager"] = eager / r["median_s"]
        r["fraction_of_matmul"] = r["gflops"] / gflops_mm
    return results


SWEEPS = {"batch": (1, 16, 64), "steps": (10, 50), "size": (32, 64), "hidden": (32, 64, 128)}
SWEEP_BACKENDS = {"batch": ("eager", "compile", "ort-step", "ort-fused", "ort-loop")}
DEFAULT_SWEEP_BACKENDS = ("eager", "ort-fused", "ort-loop")


def run_sweeps(base: BenchConfig, axes: tuple[str, ...] = tuple(SWEEPS), progress: Callable[[str], None] = lambda s: None):
    """One-dimensional sweeps around ``base``: how cost grows with batch, steps, image size and width."""
    rows = []
    for axis in axes:
        for value in SWEEPS[axis]:
            cfg = replace(base, **{axis: value}, backends=SWEEP_BACKENDS.get(axis, DEFAULT_SWEEP_BACKENDS))
            progress(f"sweep {axis}={value}")
            res = run_bench(cfg)
            for name, r in res["backends"].items():
                work = cfg.batch * cfg.steps * cfg.size * cfg.size  # image-steps x pixels
                rows.append({"axis": axis, "value": value, "backend": name, "images_per_s": r["images_per_s"],
                             "vs_eager": r["vs_eager"], "fraction_of_matmul": r["fraction_of_matmul"],
                             "ns_per_pixel_step": r["median_s"] / work * 1e9, "median_s": r["median_s"]})
    return rows

"""``diffzoo bench --diffusers``: a diffusers UNet2DModel folder, diffusers' own sampling loops against diffzoo's bundle.

One run, same weights and x_T, round-robin repeats (``harness.time_backends``): diffusers' eager loop
(``DDIMScheduler.step`` / ``DPMSolverMultistepScheduler.step`` around the ``UNet2DModel``, as
``DDIMPipeline`` runs it), the same loop around ``torch.compile`` of the UNet, and the bundle's
``loop``, ``fused`` and ``step`` modes on the CPU provider, each on diffusers' own timestep grid.
Also the footprint of going from the folder to a deployed sampler: export time and peak memory
(a child process), bundle size, session-creation time per artifact, and the peak memory of
sampling in each mode (a child process each). Benchmarks measure; verdicts live in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.format.artifacts import select
from export.format.manifest import load_manifest
from runtime.apps.bench.harness import conv_flops, machine, matmul_gflops, peak_rss_mb, time_backends
from runtime.requests import MODES
from zoo.solvers import SOLVER_TABLE, SOLVERS

__all__ = ["PeerConfig", "run_peer_bench", "format_peer_bench", "DDPM_CIFAR10_SOURCE"]

DDPM_CIFAR10_SOURCE = "ddpm-cifar10"  # --diffusers ddpm-cifar10: the DDPM CIFAR-10 architecture, random init


@dataclass(frozen=True)
class PeerConfig:
    source: str = DDPM_CIFAR10_SOURCE  # a diffusers folder, or DDPM_CIFAR10_SOURCE
    batches: tuple[int, ...] = (1, 16)
    steps: tuple[tuple[str, int], ...] = (("ddim", 50), ("dpmpp_2m", 20))
    threads: int = 2
    repeats: int = 2
    seed: int = 0
    compile: bool = True


def _child(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ``diffzoo ARGV`` in a child process of its own (a fresh ru_maxrss)."""
    code = ("import resource, sys\nfrom runtime.apps.cli import main\nrc = main(sys.argv[1:])\n"
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"diffzoo {' '.join(argv)} failed: {r.stderr.strip().splitlines()[-1:]}")
    kb = next(int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return seconds, kb / 1024


def _folder(cfg: PeerConfig, tmp: Path) -> Path:
    if cfg.source != DDPM_CIFAR10_SOURCE:
        return Path(cfg.source)
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from zoo.diffusers_unet import DDPM_CIFAR10

    folder = tmp / DDPM_CIFAR10_SOURCE
    torch.manual_seed(cfg.seed)
    UNet2DModel(**DDPM_CIFAR10).save_pretrained(folder)
    DDPMScheduler().save_config(folder)  # DDPM's linear betas 1e-4..0.02 over 1000 steps, clip 1.0
    return folder


def _footprint(folder: Path, bundle: Path, batch: int, threads: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Export (time, peak RSS), bundle size, session creation per artifact, peak RSS of sampling per mode."""
    import runtime

    progress("exporting the folder (child process)")
    export_s, export_mb = _child(["export", "--diffusers", str(folder), "--out", str(bundle), "--formats", "onnx"])
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    onnx_mb = {p.stem: p.stat().st_size / 2**20 for p in bundle.glob("*.onnx")}
    sessions = {}
    artifacts = load_manifest(bundle)["artifacts"]
    for artifact in ["denoiser"] + [select(artifacts, kind, s, SOLVER_TABLE[s].stochastic(0.0)) for s in SOLVERS
                                    for kind in ("fused_step", "sampler")]:
        sampler = runtime.load(bundle, provider="cpu", threads=threads)  # a fresh sampler: nothing cached
        t0 = time.perf_counter()
        sampler.session(artifact)
        sessions[artifact] = time.perf_counter() - t0
    sample_mb = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            progress(f"peak memory of sampling, {mode} mode, batch {batch} (child process)")
            _, sample_mb[mode] = _child(["sample", str(bundle), "--provider", "cpu", "--mode", mode, "--n", str(batch),
                                         "--batch-size", str(batch), "--steps", "2", "--out", str(Path(tmp) / "x.npy")])
    return {"export_s": export_s, "export_peak_rss_mb": export_mb, "bundle_mb": size / 2**20, "onnx_mb": onnx_mb,
            "session_s": sessions, "sample_peak_rss_mb": sample_mb, "sample_batch": batch}


def _backends(unet, scheduler_config: dict, sampler, solver: str, steps: int, x_T: np.ndarray,
              compiled) -> tuple[dict[str, Callable[[], np.ndarray]], dict[str, Callable[[], np.ndarray]]]:
    """(timed backends, warm-ups): each backend's warm-up is the same call on a 2-step grid (compiles, makes sessions).

    Every backend's output is kept from its first timed run, so drift is measured on the real grid."""
    import diffusers
    import torch

    scheduler_class = getattr(diffusers, SOLVER_TABLE[solver].diffusers)

    def make(n: int):
        scheduler = scheduler_class.from_config(scheduler_config)
        scheduler.set_timesteps(n)
        ts = scheduler.timesteps.numpy().astype(np.int64)

        def diffusers_loop(net):
            def run() -> np.ndarray:
                s = scheduler_class.from_config(scheduler_config)  # multistep state starts afresh every run
                s.set_timesteps(n)
                x = torch.from_numpy(x_T.copy())
                with torch.inference_mode():
                    for t in s.timesteps:
                        x = s.step(net(x, t).sample, t, x).prev_sample
                return x.numpy()
            return run

        out = {"diffusers": diffusers_loop(unet)}
        if compiled is not None:
            out["diffusers-compile"] = diffusers_loop(compiled)
        for mode in MODES:  # the scheduler's own grid, resolved before timing
            plan = sampler.plan(n=len(x_T), timesteps=ts, solver=solver, mode=mode)
            out[f"diffzoo-{mode}"] = (lambda p: lambda: sampler.run_batch(p, x_T))(plan)
        return out

    return make(steps), make(2)


def run_peer_bench(cfg: PeerConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    import torch
    from diffusers import UNet2DModel

    import runtime
    from zoo.diffusers_unet import load_pretrained

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="diffzoo-peer-") as tmp:
            folder = _folder(cfg, Path(tmp))
            p = load_pretrained(folder)  # the same folder checks as export: a refused folder stops here
            bundle = Path(tmp) / "bundle"
            c, h, w = p.model.config.sample_shape or (p.model.config.channels, 32, 32)  # export's example shape too
            res: dict[str, Any] = {"config": asdict(cfg), "machine": machine(),
                                   "model": {"parameters": sum(q.numel() for q in p.model.parameters()),
                                             "schedule": p.schedule.name, "clip_range": p.clip_range, "shape": [c, h, w]},
                                   "footprint": _footprint(folder, bundle, max(cfg.batches), cfg.threads, progress),
                                   "runs": []}
            res["flops_per_image_step"] = conv_flops(p.model, h, w)  # the convolutions' share; attention not counted
            res["matmul_gflops"] = matmul_gflops(cfg.threads)
            unet = UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False).eval()  # (no accelerate needed)
            compiled = torch.compile(unet) if cfg.compile else None
            scheduler_config = json.loads((folder / "scheduler_config.json").read_text()) if (
                folder / "scheduler_config.json").is_file() else {}
            sampler = runtime.load(bundle, provider="cpu", threads=cfg.threads)
            for batch in cfg.batches:
                x_T = np.random.default_rng(cfg.seed).standard_normal((batch, c, h, w), dtype=np.float32)
                for solver, steps in cfg.steps:
                    progress(f"batch {batch}, {solver} {steps} steps")
                    backends, warm_ups = _backends(unet, scheduler_config, sampler, solver, steps, x_T, compiled)
                    outputs, warm, rss, times = time_backends(backends, cfg.repeats, progress, warm_ups=warm_ups)
                    ref = np.asarray(outputs["diffusers"], np.float64)
                    base = statistics.median(times["diffusers"])
                    res["runs"].append({"batch": batch, "solver": solver, "steps": steps, "backends": {
                        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "warmup_s": warm[name],
                               "ms_per_step": statistics.median(t) / steps * 1e3,
                               "vs_diffusers": base / statistics.median(t),
                               "fraction_of_matmul": res["flops_per_image_step"] * batch * steps / statistics.median(t)
                               / 1e9 / res["matmul_gflops"],
                               "drift_vs_diffusers": float(np.abs(np.asarray(outputs[name], np.float64) - ref).max()),
                               "peak_rss_mb": rss[name]}
                        for name, t in times.items()}})
            res["matmul_gflops_after"] = matmul_gflops(cfg.threads)  # a gap from the first: the load changed
            res["peak_rss_mb"] = peak_rss_mb()
            return res
    finally:
        torch.set_num_threads(threads_before)


def format_peer_bench(res: dict[str, Any]) -> str:
    f, m = res["footprint"], res["model"]
    lines = [
        f"model: diffusers UNet2DModel, {m['parameters']:,} parameters, {m['schedule']} schedule, x0 clip "
        f"{m['clip_range']}, images {'x'.join(map(str, m['shape']))}; {res['machine']['cpu']}, {res['config']['threads']} threads",
        f"export (child process): {f['export_s']:.1f} s, peak RSS {f['export_peak_rss_mb']:.0f} MB; bundle {f['bundle_mb']:.0f} MB "
        f"(ONNX: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(f["onnx_mb"].items())) + " MB)",
        "session creation (CPU): " + ", ".join(f"{k} {v:.2f} s" for k, v in f["session_s"].items()),
        f"convolutions {res['flops_per_image_step'] / 1e9:.2f} GFLOP per image per step; fp32 matmul "
        f"{res['matmul_gflops']:.0f} GFLOP/s before the runs, {res['matmul_gflops_after']:.0f} after",
        f"peak RSS sampling batch {f['sample_batch']} (child process): " + ", ".join(
            f"{k} {v:.0f} MB" for k, v in f["sample_peak_rss_mb"].items()),
    ]
    for run in res["runs"]:
        lines += ["", f"batch {run['batch']}, {run['solver']} {run['steps']} steps (diffusers' timestep grid; "
                      f"{res['config']['repeats']} round-robin repeats)",
                  f"{'backend':<20}{'median s':>10}{'ms/step':>10}{'vs diffusers':>14}{'of matmul':>11}{'drift':>11}"
                  f"{'warm-up s':>11}"]
        for name, b in run["backends"].items():
            lines.append(f"{name:<20}{b['median_s']:>10.2f}{b['ms_per_step']:>10.1f}{b['vs_diffusers']:>13.2f}x"
                         f"{b['fraction_of_matmul']:>11.0%}{b['drift_vs_diffusers']:>11.1e}{b['warmup_s']:>11.1f}")
        fastest = max((n for n in run["backends"] if n.startswith("diffzoo-")), key=lambda n: run["backends"][n]["vs_diffusers"])
        line = f"fastest diffzoo mode: {fastest}, {run['backends'][fastest]['vs_diffusers']:.2f}x diffusers' eager loop"
        if "diffusers-compile" in run["backends"]:
            b = run["backends"]
            line += f", {b['diffusers-compile']['median_s'] / b[fastest]['median_s']:.2f}x its torch.compile loop"
        lines.append(line)
    lines += ["", "drift: max |diff| of the final images to diffusers' eager loop (images in [-1, 1]). Every step clips the "
                  "predicted x0, so a random-init UNet (whose x0 is mostly clipped) is chaotic: float rounding alone moves "
                  "its loops by O(1), DPM-Solver++ (which diffusers does not clip) the most, and diffusers' own eager "
                  "and compiled loops differ as much. Only a trained model's drift measures agreement "
                  "(docs/BENCHMARKS.md, the peer benchmark)."]
    return "\n".join(lines)

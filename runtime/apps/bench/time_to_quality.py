"""``diffzoo bench --quality``: image quality against solver steps, and the seconds each backend needs to reach it.

What users wait for is an image of a given quality, not a step. So, for a trained bundle and the
quality metric of ``zoo.training.metrics`` (Frechet distance of a data-specific classifier's features):

1. quality at 5, 10, 15, 20 and 50 steps for every solver of the table (``zoo.solvers``), leading and
   trailing spacing, all from the same x_T (image k depends only on (seed, k));
2. the stated quality: the Frechet distance DDIM (leading) reaches at 50 steps, plus the metric's
   run-to-run spread (the same configuration sampled from other seeds), so a configuration
   "reaches" it when it is within that spread;
3. per configuration the fewest steps that reach it, and, per backend, the seconds to sample a
   batch at that step count, timed side by side in one run (round-robin repeats);
4. the cost of one step of each solver in each backend (the graphs' overhead per step).

A class-conditional bundle samples every class in turn at the given guidance (``class_settings``), in
the figures and in every backend, and its quality rows add the conditional accuracy.

Benchmarks measure; nothing here asserts a timing.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.apps.bench.harness import step_noise
from zoo.solvers import SOLVERS

__all__ = ["CONFIGS", "STEPS", "run_time_to_quality", "format_time_to_quality"]

CONFIGS = tuple((solver, spacing) for solver in SOLVERS for spacing in ("leading", "trailing"))  # every solver of the table
STEPS = (5, 10, 15, 20, 50)
REFERENCE = ("ddim", "leading", 50)  # the quality every other configuration is asked to reach
SPREAD_SEEDS = (1, 2)  # the reference configuration again from these seeds: the metric's run-to-run spread
COST_STEPS = 20  # steps of the per-step cost runs


def _label(solver: str, spacing: str) -> str:
    return f"{solver} {spacing}"


def _quality(sampler, data: str, n: int, solver: str, spacing: str, steps: int, seed: int, classifier,
             guidance: float) -> dict[str, float]:
    from runtime.apps.evaluate import class_settings
    from zoo.training.metrics import quality_report

    cond = class_settings(sampler.manifest, n, guidance)
    x = sampler.sample(n, num_steps=steps, seed=seed, spacing=spacing, solver=solver, mode="loop", **cond)
    rep = quality_report(x, data, classifier=classifier, labels=cond.get("labels"))
    d = rep.to_dict()
    return {"fd": d["fd_samples"], "floor": d["fd_floor"], "noise": d["fd_noise"], "confidence": d["confidence_samples"],
            "conditional_accuracy": d["conditional_accuracy"], "met": rep.met}


def _backends(bundle: Path, threads: int, names: tuple[str, ...], cond: dict[str, np.ndarray]) -> dict[str, Callable[..., np.ndarray]]:
    """name -> f(x_T, noise, solver, spacing, steps) sampling one batch with ``cond`` (``noise``: the per-step noise of a
    solver that draws it, else None); the bundle's own graphs and weights."""
    import torch

    import runtime
    import zoo
    from export.bundle import load_model

    model, schedule, _ = load_model(bundle)
    torch.set_num_threads(threads)
    cpu = runtime.load(bundle, provider="cpu", threads=threads)
    out: dict[str, Callable[..., np.ndarray]] = {}

    def torch_noise(noise, device="cpu"):
        return {} if noise is None else {"noise": torch.from_numpy(noise).to(device)}

    def eager(x_T, noise, solver, spacing, steps):
        return zoo.sample(model, schedule, torch.from_numpy(x_T), num_steps=steps, solver=solver, spacing=spacing,
                          **cond, **torch_noise(noise)).numpy()

    def planned(sampler, mode: str) -> Callable[..., np.ndarray]:  # each run's plan resolved once, on its untimed warm-up
        plans: dict[tuple, Any] = {}

        def run(x_T, noise, solver, spacing, steps):
            if (solver, spacing, steps) not in plans:
                plans[solver, spacing, steps] = sampler.plan(n=len(x_T), num_steps=steps, solver=solver, spacing=spacing,
                                                             mode=mode, **cond)
            return sampler.run_batch(plans[solver, spacing, steps], x_T, noise)
        return run

    out["eager"] = eager
    for mode in ("step", "fused", "loop"):
        out[f"ort-{mode}"] = planned(cpu, mode)
    if torch.cuda.is_available() and runtime.cuda_unavailable_reason() is None and any("cuda" in n for n in names):
        import copy

        gpu_model = copy.deepcopy(model).to("cuda")
        gpu = runtime.load(bundle, provider="cuda")
        graph = runtime.load(bundle, provider="cuda", cuda=runtime.CudaOptions(cuda_graph=True))

        def eager_cuda(x_T, noise, solver, spacing, steps):
            x = zoo.sample(gpu_model, schedule, torch.from_numpy(x_T).cuda(), num_steps=steps, solver=solver, spacing=spacing,
                           **cond, **torch_noise(noise, "cuda"))
            return x.cpu().numpy()

        out["eager-cuda"] = eager_cuda
        for name, s, mode in (("ort-cuda-fused", gpu, "fused"), ("ort-cuda-fused-graph", graph, "fused"),
                              ("ort-cuda-loop", gpu, "loop")):
            out[name] = planned(s, mode)
    from runtime.apps.bench.openvino import OpenVINOSampler, openvino_unavailable_reason

    if openvino_unavailable_reason() is None:
        ov = OpenVINOSampler(bundle, threads=threads)
        for mode in ("fused", "loop"):
            out[f"openvino-{mode}"] = planned(ov, mode)
    return {k: v for k, v in out.items() if k in names}


def run_time_to_quality(
    bundle: str | Path,
    data: str,
    n: int = 360,
    batch: int = 16,
    threads: int = 2,
    repeats: int = 3,
    backends: tuple[str, ...] = ("eager", "ort-step", "ort-fused", "ort-loop", "openvino-fused", "openvino-loop"),
    progress: Callable[[str], None] = lambda s: None,
    guidance: float = 1.0,
) -> dict[str, Any]:
    """Quality against steps for every configuration, then the time each backend needs to reach the stated quality.

    A class-conditional bundle samples every class in turn at ``guidance``. Backends that cannot
    run here (no GPU, no ``openvino``) are listed under ``"skipped"``.
    """
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _run(Path(bundle), data, n, batch, threads, repeats, backends, progress, guidance)
    finally:
        torch.set_num_threads(threads_before)  # process-global: give it back


def _run(bundle: Path, data: str, n: int, batch: int, threads: int, repeats: int, backends: tuple[str, ...],
         progress: Callable[[str], None], guidance: float) -> dict[str, Any]:
    import torch

    import runtime
    from export.format.manifest import load_manifest
    from runtime.apps.evaluate import class_settings
    from zoo.conditioning import check_guidance
    from zoo.training.metrics import reference_classifier

    manifest = load_manifest(bundle)
    check_guidance(guidance, 1, True)  # one w in check_guidance's range
    torch.set_num_threads(threads)
    shape = manifest["data"]["shape"]
    classifier = reference_classifier(data, size=shape[-1])
    sampler = runtime.load(bundle, provider="cpu", threads=threads)
    quality: dict[str, dict[int, dict[str, float]]] = {}
    for solver, spacing in CONFIGS:
        quality[_label(solver, spacing)] = {}
        for steps in STEPS:
            progress(f"quality: {solver} {spacing} {steps} steps")
            quality[_label(solver, spacing)][steps] = _quality(sampler, data, n, solver, spacing, steps, 0, classifier, guidance)
    ref_solver, ref_spacing, ref_steps = REFERENCE
    ref = quality[_label(ref_solver, ref_spacing)][ref_steps]["fd"]
    others = [_quality(sampler, data, n, ref_solver, ref_spacing, ref_steps, s, classifier, guidance)["fd"] for s in SPREAD_SEEDS]
    spread = max(abs(f - ref) for f in others)
    target = ref + spread
    reach = {label: next((s for s in STEPS if q[s]["fd"] <= target), None) for label, q in quality.items()}

    cond = class_settings(manifest, batch, guidance)
    fns = _backends(bundle, threads, backends, cond)
    x_T = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    ref_label = _label(ref_solver, ref_spacing)
    runs = [(b, ref_label, ref_steps) for b in fns]  # the reference run itself: what "x less time" is against
    runs += [(b, label, steps) for b in fns for label, steps in reach.items() if steps is not None]
    runs += [(b, _label(s, "trailing"), COST_STEPS) for b in fns for s in SOLVERS]
    runs = list(dict.fromkeys(runs))
    config = {_label(sv, sp): (sv, sp) for sv, sp in CONFIGS}  # label -> (solver, spacing)
    # each run's per-step noise (a solver that draws it), drawn here, outside the timed calls
    noise = {(label, steps): step_noise(config[label][0], steps, x_T, 0) for _, label, steps in runs}
    times: dict[tuple[str, str, int], list[float]] = {r: [] for r in runs}
    for b, label, steps in runs:  # warm-up: session creation and first-run allocation are not counted
        fns[b](x_T, noise[label, steps], *config[label], steps)
    for r in range(repeats):
        progress(f"timing: repeat {r + 1}/{repeats} over {len(runs)} runs")
        for key in runs:
            b, label, steps = key
            t0 = time.perf_counter()
            fns[b](x_T, noise[label, steps], *config[label], steps)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    seconds = {b: {label: (med[(b, label, s)] if s is not None else None) for label, s in reach.items()} for b in fns}
    reference_seconds = {b: med[(b, ref_label, ref_steps)] for b in fns}
    per_step = {b: {s: med[(b, _label(s, "trailing"), COST_STEPS)] / COST_STEPS * 1e3 for s in SOLVERS} for b in fns}
    return {
        "bundle": str(bundle), "data": data, "samples": n, "batch": batch, "threads": threads, "repeats": repeats,
        "guidance": guidance if cond else None,
        "quality": {label: {str(s): q for s, q in rows.items()} for label, rows in quality.items()},
        "reference": {"config": list(REFERENCE), "fd": ref, "fd_other_seeds": others, "spread": spread, "target": target},
        "steps_to_target": reach, "seconds_to_target": seconds, "reference_seconds": reference_seconds,
        "ms_per_step": per_step, "skipped": [b for b in backends if b not in fns], "timing_runs": {
            f"{b} {label} {s}": v for (b, label, s), v in times.items()},
    }


def format_time_to_quality(res: dict[str, Any]) -> str:
    ref = res["reference"]
    w = 2 + max(len(label) for label in res["quality"])  # every column as wide as the longest label it may hold
    lines = [
        f"time to quality: {res['bundle']} against {res['data']}, {res['samples']} samples per figure; timings: batch "
        f"{res['batch']}, {res['threads']} threads, median of {res['repeats']} round-robin repeats after a warm-up"
        + (f"; every class in turn at guidance {res['guidance']:g}" if res.get("guidance") is not None else ""),
        "",
        "Frechet distance (classifier features; lower is better) by solver steps, the same x_T for every cell",
        f"{'solver':<{w}}" + "".join(f"{s:>8}" for s in STEPS),
    ]
    for label, rows in res["quality"].items():
        lines.append(f"{label:<{w}}" + "".join(f"{rows[str(s)]['fd']:>8.2f}" for s in STEPS))
    if res.get("guidance") is not None:
        lines += ["", "conditional accuracy (share of samples the classifier assigns to the class asked for)",
                  f"{'solver':<{w}}" + "".join(f"{s:>8}" for s in STEPS)]
        for label, rows in res["quality"].items():
            lines.append(f"{label:<{w}}" + "".join(f"{rows[str(s)]['conditional_accuracy']:>8.3f}" for s in STEPS))
    floor = next(iter(next(iter(res["quality"].values())).values()))
    lines += [
        f"real held-out data (floor) {floor['floor']:.2f}, pure noise {floor['noise']:.2f}",
        "",
        f"stated quality: DDIM leading at 50 steps reaches FD {ref['fd']:.2f}; from other seeds "
        + ", ".join(f"{f:.2f}" for f in ref["fd_other_seeds"])
        + f": spread {ref['spread']:.2f}, so the target is FD <= {ref['target']:.2f}",
        "",
        "seconds for a batch to reach the target (in brackets: x less time than the reference run, DDIM leading "
        f"at {ref['config'][2]} steps)",
        f"{'backend':<22}{'reference':>11}" + "".join(f"{label:>{w}}" for label in res["steps_to_target"]),
        f"{'(steps)':<22}{ref['config'][2]:>11}" + "".join(f"{('-' if s is None else s):>{w}}" for s in res["steps_to_target"].values()),
    ]
    for b, row in res["seconds_to_target"].items():
        base = res["reference_seconds"][b]
        cells = ["-" if sec is None else f"{sec:.3f} ({base / sec:.1f}x)" for sec in row.values()]
        lines.append(f"{b:<22}{base:>11.3f}" + "".join(f"{c:>{w}}" for c in cells))
    solvers = list(next(iter(res["ms_per_step"].values()), {}))  # the solvers measured, in the table's order
    sw = 2 + max(map(len, solvers), default=0)
    lines += ["", f"cost per step (ms, batch {res['batch']}, {COST_STEPS} trailing steps; each ratio: to the first)",
              f"{'backend':<22}" + "".join(f"{s:>{sw}}" for s in solvers) + "".join(f"{'ratio':>8}" for _ in solvers[1:])]
    for b, r in res["ms_per_step"].items():
        lines.append(f"{b:<22}" + "".join(f"{r[s]:>{sw}.3f}" for s in solvers)
                     + "".join(f"{r[s] / r[solvers[0]]:>8.3f}" for s in solvers[1:]))
    if res.get("skipped"):
        lines.append("not run here: " + ", ".join(res["skipped"]) + " (no GPU, or the openvino package is not installed)")
    loop, fused = res["ms_per_step"].get("ort-loop"), res["ms_per_step"].get("ort-fused")
    if loop and fused:
        lines.append("ort-loop per step against ort-fused: " + ", ".join(f"{s} {loop[s] / fused[s]:.3f}" for s in loop))
    return "\n".join(lines)

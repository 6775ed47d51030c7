"""``diffzoo bench``: every backend on the same model, inputs and thread count, side by side in one run.

Backends: eager torch (``ddim_sample``), ``torch.compile``, TorchScript, eager bf16 autocast, a plain
per-step onnxruntime loop with the DDIM update in numpy, and the runtime's ``step``, ``fused`` and
``loop`` modes (plus CUDA variants when a GPU is present). Reported per backend: images/s, ms per
denoising step, ratio to eager, achieved GFLOP/s from the model's direct-convolution FLOP count and
its fraction of the fp32 matrix-multiply rate measured in the same run, drift from eager fp32, and
the process's peak RSS. Benchmarks measure; nothing here asserts a timing.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.format.artifacts import select
from export.format.manifest import check_identity, load_manifest, read_verified
from export.verify import relative_rms
from runtime.feeds import fused_on_host, step_list
from runtime.requests import Conditioning, SampleRequest
from zoo.solvers import get_solver, solve

__all__ = ["BenchConfig", "run_bench", "conv_flops", "matmul_gflops", "format_results", "key_ratios"]

CPU_BACKENDS = (
    "eager", "compile", "torchscript", "eager-bf16", "ort-numpy-step", "ort-step", "ort-fused", "ort-loop", "ort-loop-shipped",
    "ort-int8-step", "ort-int8-fused", "ort-int8-loop", "openvino-fused", "openvino-loop",
)
OPENVINO_BACKENDS = ("openvino-fused", "openvino-loop")  # when the openvino package is installed
INT8_BACKENDS = ("ort-int8-step", "ort-int8-fused", "ort-int8-loop")
REDUCED_BACKENDS = ("eager-bf16",) + INT8_BACKENDS  # reported with their per-step error against fp32
CUDA_BACKENDS = ("eager-cuda", "ort-cuda-fused-host", "ort-cuda-fused", "ort-cuda-fused-graph", "ort-cuda-loop")


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


# With a class-conditional model, these backends run again on the same network without classes (num_classes=0,
# batch B where the guided graphs run 2B): the guided step's cost is the ratio of the two, side by side in one run.
UNGUIDED_TWINS = ("eager", "ort-step", "ort-fused", "ort-loop")
UNGUIDED = "-unguided"


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


def _peak_rss_mb() -> float:
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


def _backends(cfg: BenchConfig, bundle: Path, model, schedule, x_T: np.ndarray):
    """name -> zero-argument callable that samples the whole batch and returns x_0 (numpy)."""
    import runtime
    import zoo
    from runtime.apps.evaluate import class_settings

    ts = zoo.ddim_timesteps(schedule.num_train_timesteps, cfg.steps)
    alphas = schedule.alphas_cumprod.astype(np.float32)
    # the solver around a backend's denoiser (torch or numpy), as the eager samplers run it, unchecked like the graphs
    noise = step_noise(cfg.solver, cfg.steps, x_T, cfg.seed)
    loop = functools.partial(solve, cfg.solver, timesteps=ts, alphas=alphas, check=False,
                             noise=None if noise is None else noise.__getitem__)
    manifest = load_manifest(bundle)  # hashed once; the backends read their graphs' verified bytes with it
    cond = class_settings(manifest, len(x_T), cfg.guidance)  # {} for an unconditional model
    request = SampleRequest(n=len(x_T), num_steps=cfg.steps, solver=cfg.solver, seed=cfg.seed, **cond)  # every runtime backend's
    graph_cond = Conditioning.of(manifest, len(x_T), **cond)  # what the graphs are fed for it, by the bundle's declaration
    out = {**_torch_backends(cfg, bundle, manifest, model, schedule, x_T, noise, loop, cond, graph_cond),
           **_ort_backends(cfg, bundle, manifest, x_T, request, noise, loop, graph_cond)}
    if any(b in cfg.backends for b in OPENVINO_BACKENDS):
        from runtime.apps.bench.openvino import OpenVINOSampler

        ov = OpenVINOSampler(bundle, threads=cfg.threads)
        for mode in ("fused", "loop"):
            out[f"openvino-{mode}"] = _run(ov, ov.plan(request, mode=mode), x_T, noise)
    import torch

    if torch.cuda.is_available() and runtime.cuda_unavailable_reason() is None:
        out.update(_cuda_backends(cfg, bundle, model, schedule, x_T, ts, request, noise, cond, graph_cond))
    return {k: v for k, v in out.items() if k in cfg.backends}


def _unguided_backends(cfg: BenchConfig, tmp: Path, model, schedule, x_T: np.ndarray) -> dict[str, Callable]:
    """``UNGUIDED_TWINS`` on the same architecture without classes (its own random init: only the cost is compared)."""
    import export
    import zoo

    twin = zoo.build(model.name, **{**asdict(model.config), "num_classes": 0}).eval()
    bundle = export.export_bundle(twin, tmp / "unguided", schedule=schedule, example_shape=x_T.shape[1:], formats=("onnx",),
                                  solvers=(cfg.solver,)).path
    plain = replace(cfg, backends=UNGUIDED_TWINS, classes=0)
    return {f"{k}{UNGUIDED}": v for k, v in _backends(plain, bundle, twin, schedule, x_T).items()}


def _torch_backends(cfg: BenchConfig, bundle: Path, manifest: dict, model, schedule, x_T: np.ndarray, noise, loop,
                    cond: dict[str, np.ndarray], graph_cond: Conditioning) -> dict[str, Callable]:
    """Eager torch (fp32, bf16 autocast, torch.compile) and the bundle's TorchScript denoiser and step."""
    import torch

    import zoo
    from zoo.conditioning import guided_eps

    xt = torch.from_numpy(x_T)
    run = {"num_steps": cfg.steps, "solver": cfg.solver, **cond, **({} if noise is None else {"noise": torch.from_numpy(noise)})}

    def eager(m):
        return lambda: zoo.sample(m, schedule, xt, **run).cpu().numpy()

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return zoo.sample(model, schedule, xt, **run).float().numpy()

    out = {"eager": eager(model), "eager-bf16": bf16}
    if "compile" in cfg.backends:
        out["compile"] = eager(torch.compile(model))
    if "torchscript" in cfg.backends:
        from export.torchscript import load_traced

        artifacts = manifest["artifacts"]
        solver = get_solver(cfg.solver)
        step_name = select(artifacts, "step", cfg.solver, solver.stochastic(0.0))
        den, step = (load_traced(read_verified(bundle, manifest, artifacts[a]["files"]["torchscript"]))
                     for a in (select(artifacts, "denoiser"), step_name))
        step_inputs = [i["name"] for i in artifacts[step_name]["inputs"]]

        def ts_update(x, eps, state, a_t, a_prev, a_earlier, eta=0.0, noise=None, **_):  # the traced step, inputs by name
            feed = {"x_t": x, "eps": eps, "noise": None if noise is None else torch.as_tensor(noise), "eta": torch.tensor(float(eta)),
                    **dict(zip((i for i, _ in solver.state), state)),
                    **{n: torch.full((len(x),), float(a)) for n, a in zip(solver.alpha_inputs, (a_t, a_prev, *a_earlier))}}
            out = step(*(feed[n] for n in step_inputs))
            return (out[0], tuple(out[1:])) if solver.state else (out, ())

        feeds = {k: torch.from_numpy(v) for k, v in graph_cond.feeds.items()}

        def denoise(x, t):
            tt = torch.full((len(x),), t)
            return den(x, tt) if graph_cond.conditions is None else guided_eps(den, x, tt, graph_cond.conditions, feeds)

        def torchscript():
            with torch.inference_mode():
                return loop(denoise, xt, update=ts_update).numpy()

        out["torchscript"] = torchscript
    return out


def _ort_backends(cfg: BenchConfig, bundle: Path, manifest: dict, x_T: np.ndarray, request: SampleRequest, noise, loop,
                  cond: Conditioning) -> dict[str, Callable]:
    """onnxruntime on the CPU: the denoiser under a numpy solver, every runtime mode, the shipped loop, int8."""
    import onnxruntime as ort

    import runtime
    from zoo.conditioning import guided_eps

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    name = select(manifest["artifacts"], "denoiser")
    denoiser = read_verified(bundle, manifest, manifest["artifacts"][name]["files"]["onnx"])
    check_identity(denoiser, name, manifest, bundle)
    plain = ort.InferenceSession(denoiser, so, providers=["CPUExecutionProvider"])

    def predict(x, t, **conditioning):
        return plain.run(None, {"x": x, "t": t, **conditioning})[0]

    def numpy_eps(x, t):
        tt = np.full(len(x), t, np.int64)
        return predict(x, tt) if cond.conditions is None else guided_eps(predict, x, tt, cond.conditions, cond.feeds)

    out = {"ort-numpy-step": lambda: loop(numpy_eps, x_T)}
    cpu = runtime.load(bundle, provider="cpu", threads=cfg.threads)
    for mode in ("step", "fused", "loop"):
        out[f"ort-{mode}"] = _run(cpu, cpu.plan(request, mode=mode), x_T, noise)
    shipped = runtime.load(bundle, provider="cpu", threads=cfg.threads)
    shipped.optimize_cpu_loop = False  # the bundle's sampler.onnx as exported: no NCHWc inside the Loop body
    out["ort-loop-shipped"] = _run(shipped, shipped.plan(request, mode="loop"), x_T, noise)
    if any(b in cfg.backends for b in INT8_BACKENDS):
        int8 = runtime.load(bundle, provider="cpu", threads=cfg.threads, precision="int8")
        for mode in ("step", "fused", "loop"):
            out[f"ort-int8-{mode}"] = _run(int8, int8.plan(request, mode=mode, precision="int8"), x_T, noise)
    return out


def _run(sampler, plan, x_T: np.ndarray, noise) -> Callable[[], np.ndarray]:
    """A runtime backend: one batch of a plan resolved before timing."""
    return lambda: sampler.run_batch(plan, x_T, noise)


def _cuda_backends(cfg: BenchConfig, bundle: Path, model, schedule, x_T: np.ndarray, ts, request: SampleRequest, noise,
                   cond: dict[str, np.ndarray], graph_cond: Conditioning) -> dict[str, Callable]:
    """Eager torch on CUDA and onnxruntime's CUDA provider: fused with and without IO binding, CUDA graph, loop."""
    import copy

    import torch

    import runtime
    import zoo

    solver = cfg.solver
    dev_model = copy.deepcopy(model).to("cuda")  # .to() is in place: keep the CPU backends' model on the CPU
    x_dev = torch.from_numpy(x_T).to("cuda")
    gpu = runtime.load(bundle, provider="cuda")
    graph = runtime.load(bundle, provider="cuda", cuda=runtime.CudaOptions(cuda_graph=True))
    fused = gpu.session(gpu.plan(request, mode="fused").artifact)
    inputs = [i.name for i in fused.get_inputs()]
    noise_dev = {} if noise is None else {"noise": torch.from_numpy(noise).to("cuda")}

    def host_fused():  # no IO binding: x goes to the GPU and back every step
        return fused_on_host(lambda feed, outputs: fused.run(outputs, feed), solver, inputs, x_T, ts, gpu.alphas_cumprod,
                             noise=noise, cond=graph_cond.feeds)

    return {
        "eager-cuda": lambda: zoo.sample(dev_model, schedule, x_dev, num_steps=cfg.steps, solver=solver, **cond,
                                         **noise_dev).cpu().numpy(),
        "ort-cuda-fused-host": host_fused,
        "ort-cuda-fused": _run(gpu, gpu.plan(request, mode="fused"), x_T, noise),
        "ort-cuda-fused-graph": _run(graph, graph.plan(request, mode="fused"), x_T, noise),
        "ort-cuda-loop": _run(gpu, gpu.plan(request, mode="loop"), x_T, noise),
    }


def _step_errors(cfg: BenchConfig, bundle: Path, model, schedule, x_T: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per-step error of the reduced-precision backends: one step from each fp32 state, against fp32.

    Every step's input of the eager fp32 run of ``cfg.solver`` (x and the solver's state; the
    exported graphs match it within their derived bounds) goes through one reduced-precision step;
    the worst step's relative RMS and max |diff| are kept. The final-image drift (errors compounded
    over the run) is reported beside it.
    """
    import torch

    import runtime
    import zoo

    if not names:
        return {}
    solver = get_solver(cfg.solver)
    ts = zoo.ddim_timesteps(schedule.num_train_timesteps, cfg.steps)
    alphas = torch.from_numpy(schedule.alphas_cumprod.astype(np.float32))
    noise = step_noise(cfg.solver, cfg.steps, x_T, cfg.seed)
    steps: list[tuple] = []  # (x, state, alpha-bars, the step's keywords (its noise), the fp32 step's x_prev)

    def record(x, eps, state, *abars, **kw):
        out = solver.update(x, eps, state, *abars, **kw)
        steps.append((x, state, abars, kw, out[0]))
        return out

    with torch.inference_mode():
        solve(solver, lambda x, t: model(x, torch.full((len(x),), t)), torch.from_numpy(x_T), ts, alphas, update=record,
              check=False, noise=None if noise is None else lambda i: torch.from_numpy(noise[i]))
    reduced: dict[str, Callable[..., torch.Tensor]] = {}
    if any(n in INT8_BACKENDS for n in names):  # the solvers with int8 graphs (the CLI refuses the others up front)
        int8_sampler = runtime.load(bundle, provider="cpu", threads=cfg.threads, precision="int8")
        fused = int8_sampler.session(int8_sampler.plan(n=len(x_T), num_steps=cfg.steps, solver=cfg.solver, mode="fused").artifact)
        int8_inputs = [i.name for i in fused.get_inputs()]

        def int8(x, state, t, tp, abars, kw):
            feeds = {"x_t": x.numpy(), "t": np.full(len(x), t, np.int64), "t_prev": np.full(len(x), tp, np.int64),
                     "noise": None if kw.get("noise") is None else kw["noise"].numpy(),
                     "eta": np.array(kw.get("eta", 0.0), np.float32)}
            return torch.from_numpy(fused.run(None, {n: feeds[n] for n in int8_inputs})[0])

        reduced["int8"] = int8

    def bf16(x, state, t, tp, abars, kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eps = model(x, torch.full((len(x),), t)).float()
        return solver.update(x, eps, state, *abars, **kw)[0]

    if "eager-bf16" in names:
        reduced["bf16"] = bf16
    errors = {}
    with torch.inference_mode():
        for kind, step in reduced.items():
            rel, worst = 0.0, 0.0
            for (t, tp, *_), (x, state, abars, kw, want) in zip(step_list(ts), steps, strict=True):
                got, want = step(x, state, t, tp, abars, kw).numpy(), want.numpy()
                rel = max(rel, relative_rms(got, want))
                worst = max(worst, float(np.abs(got.astype(np.float64) - want).max()))
            errors[kind] = {"step_error_rel_rms": rel, "step_error_max": worst}
    return {n: errors["bf16" if n == "eager-bf16" else "int8"] for n in names}


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Export the model, run every backend ``cfg.repeats`` times after a warm-up, and collect figures."""
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _run_bench(cfg, progress)
    finally:
        torch.set_num_threads(threads_before)  # the thread count is process-global: give it back


def _time_backends(backends: dict[str, Callable[[], np.ndarray]], repeats: int, progress: Callable[[str], None],
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
        rss[name] = _peak_rss_mb()
    times: dict[str, list[float]] = {name: [] for name in backends}
    for r in range(repeats):
        progress(f"repeat {r + 1}/{repeats}")
        for name, fn in backends.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            outputs.setdefault(name, out)
    return outputs, warm, rss, times


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
        backends = _backends(cfg, bundle.path, model, schedule, x_T)
        if conditional:
            backends.update(_unguided_backends(cfg, Path(tmp), model, schedule, x_T))
            results["guidance"] = cfg.guidance
        outputs, warm, rss, times = _time_backends(backends, cfg.repeats, progress)
        matmul_after = matmul_gflops(cfg.threads)
        results["matmul_gflops_after"] = matmul_after
        step_errors = _step_errors(cfg, bundle.path, model, schedule, x_T, [b for b in backends if b in REDUCED_BACKENDS])
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
                **step_errors.get(name, {}),
                "peak_rss_mb": rss[name],
            }
    eager = results["backends"]["eager"]["median_s"]
    for r in results["backends"].values():
        r["vs_eager"] = eager / r["median_s"]
        r["fraction_of_matmul"] = r["gflops"] / gflops_mm
    return results


def format_results(res: dict[str, Any]) -> str:
    c, m = res["config"], res["machine"]
    lines = [
        f"{c['model']} hidden={c['hidden']}, {c['size']}x{c['size']}, batch {c['batch']}, {c['steps']} {c.get('solver', 'ddim')} steps, fp32, "
        f"{c['threads']} threads, median of {c['repeats']} after a warm-up"
        + (f"; class-conditional: every class in turn at guidance {res['guidance']:g} (-unguided: the same network "
           "without classes)" if "guidance" in res else ""),
        f"machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, onnxruntime {m['onnxruntime']}"
        + (f", GPU {m['gpu']}" if m["gpu"] else ""),
        f"fp32 matmul rate (best of torch/numpy 2048^3, same run): {res['matmul_gflops']:.1f} GFLOP/s before, "
        f"{res.get('matmul_gflops_after', float('nan')):.1f} after the timings; model: "
        f"{res['flops_per_image_step'] / 1e6:.1f} MFLOP per image per step (direct convolution)",
        "",
        f"timings: {c['repeats']} round-robin repeats over all backends after one warm-up each; "
        "a large before/after gap in the matmul rate means the machine's load changed during the run",
        f"{'backend':<22}{'img/s':>8}{'spread':>15}{'ms/step':>9}{'vs eager':>9}{'GFLOP/s':>9}{'of mm':>7}{'drift':>9}{'RSS MB':>8}",
    ]
    for name, r in res["backends"].items():
        spread = f"{c['batch'] / r['max_s']:.1f}-{c['batch'] / r['min_s']:.1f}"
        drift = f"{r['drift_vs_eager']:.1e}" if r["drift_vs_eager"] is not None else "-"
        lines.append(f"{name:<22}{r['images_per_s']:>8.1f}{spread:>15}{r['ms_per_step']:>9.1f}{r['vs_eager']:>8.2f}x"
                     f"{r['gflops']:>9.1f}{r['fraction_of_matmul']:>6.0%}{drift:>9}{r['peak_rss_mb']:>8.0f}")
    reduced = {k: r for k, r in res["backends"].items() if "step_error_rel_rms" in r}
    if reduced:
        lines += ["", "reduced precision against fp32 (per step: worst step of the run, each from the fp32 state; "
                  "final image: compounded over the run)",
                  f"{'backend':<22}{'step rel RMS':>13}{'step max':>10}{'image rel RMS':>14}{'image max':>10}"]
        for name, r in reduced.items():
            lines.append(f"{name:<22}{r['step_error_rel_rms']:>13.2%}{r['step_error_max']:>10.3f}"
                         f"{r['drift_rel_rms']:>14.2%}{r['drift_vs_eager']:>10.3f}")
    secs = res.get("export_seconds", {})
    if secs:
        lines += ["", "export seconds per artifact: " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items())]
    return "\n".join(lines)


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


def format_sweeps(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'axis':<8}{'value':>6}  {'backend':<12}{'img/s':>9}{'vs eager':>9}{'of mm':>7}{'ns/(pixel*step)':>17}"]
    for r in rows:
        lines.append(f"{r['axis']:<8}{r['value']:>6}  {r['backend']:<12}{r['images_per_s']:>9.1f}{r['vs_eager']:>8.2f}x"
                     f"{r['fraction_of_matmul']:>6.0%}{r['ns_per_pixel_step']:>17.2f}")
    return "\n".join(lines)


def key_ratios(res: dict[str, Any], sweeps: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
    """The ratios docs/BENCHMARKS.md states its targets in, as (what, figures): measured here, judged there."""
    b = res["backends"]
    ort_modes = [k for k in ("ort-step", "ort-fused", "ort-loop") if k in b]
    out = []
    if ort_modes:
        fastest = max(ort_modes, key=lambda k: b[k]["images_per_s"])
        out.append(("onnxruntime modes vs eager", ", ".join(f"{k} {b[k]['vs_eager']:.2f}x" for k in ort_modes)))
        if "compile" in b:
            out.append((f"fastest mode vs eager and torch.compile (batch {res['config']['batch']})",
                        f"{fastest} {b[fastest]['images_per_s']:.1f} vs eager {b['eager']['images_per_s']:.1f}, "
                        f"compile {b['compile']['images_per_s']:.1f} img/s"))
        per_step = [k for k in ("ort-step", "ort-fused") if k in b]
        if "ort-loop" in b and per_step:
            best = max(b[k]["images_per_s"] for k in per_step)
            out.append(("loop vs the fastest per-step mode", f"{b['ort-loop']['images_per_s'] / best:.0%}"))
        out.append(("fastest fp32 mode, fraction of the fp32 matmul rate",
                    f"{fastest}: {b[fastest]['gflops']:.0f} GFLOP/s = {b[fastest]['fraction_of_matmul']:.0%} of "
                    f"{res['matmul_gflops']:.0f}"))
        int8 = [k for k in INT8_BACKENDS if k in b]
        if int8:
            best = max(int8, key=lambda k: b[k]["images_per_s"])
            out.append(("int8 vs the fastest fp32 onnxruntime mode",
                        f"{best} {b[best]['images_per_s'] / b[fastest]['images_per_s']:.2f}x {fastest} (per-step error "
                        f"{b[best]['step_error_rel_rms']:.1%}, image drift {b[best]['drift_rel_rms']:.1%} relative RMS); "
                        + _int8_ceiling()))
    twins = [k for k in UNGUIDED_TWINS if k in b and k + UNGUIDED in b]
    if twins:
        out.append((f"guided step vs the same network without classes (every class in turn, w={res.get('guidance', 1.0):g})",
                    ", ".join(f"{k} {b[k]['median_s'] / b[k + UNGUIDED]['median_s']:.2f}x the time" for k in twins)))
    if "eager-bf16" in b:
        out.append(("eager bf16 autocast vs eager fp32",
                    f"{b['eager-bf16']['vs_eager']:.2f}x, image drift {b['eager-bf16']['drift_rel_rms']:.1%} relative RMS; "
                    + ("this CPU has bf16 arithmetic" if has_bf16() else
                       "this CPU has no bf16/fp16 arithmetic (no AVX512-BF16/AMX/AVX512-FP16), so autocast emulates it")))
    if "ort-cuda-fused-graph" in b and "eager-cuda" in b:
        out.append(("CUDA fused + IO binding + CUDA graph vs eager CUDA",
                    f"{b['ort-cuda-fused-graph']['images_per_s'] / b['eager-cuda']['images_per_s']:.2f}x"))
    for batch in SWEEPS["batch"] if sweeps else ():
        rows = {r["backend"]: r for r in sweeps if r["axis"] == "batch" and r["value"] == batch}
        modes = [rows[k] for k in ("ort-step", "ort-fused", "ort-loop") if k in rows]
        if modes and "eager" in rows and "compile" in rows:
            out.append((f"fastest mode vs eager and torch.compile at batch {batch}",
                        f"{max(m['images_per_s'] for m in modes):.1f} vs {rows['eager']['images_per_s']:.1f} / "
                        f"{rows['compile']['images_per_s']:.1f} img/s"))
    return out


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def has_bf16() -> bool:
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512_fp16"})


def _int8_ceiling() -> str:
    """What bounds int8 over fp32 on this CPU, from its instruction set."""
    flags = _cpu_flags()
    if flags & {"amx_int8", "avx512_vnni", "avx_vnni"}:
        return "this CPU has VNNI/AMX int8 dot products (4x the fp32 FMA rate at the same vector width)"
    if "avx2" in flags:
        return ("this CPU has AVX2 without VNNI: a u8 x s8 product takes two multiply instructions "
                "(vpmaddubsw + vpmaddwd) per 32 MACs against one FMA per 8, so int8 convolution peaks at 2x fp32")
    return "no x86 SIMD int8 path detected"

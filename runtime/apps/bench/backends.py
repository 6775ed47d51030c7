"""The bench's backends: one table of every way it samples a batch, and how each is built.

Every backend samples the same model, x_T, noise and conditioning with the same thread count:
eager torch (fp32, bf16 autocast, ``torch.compile``), the bundle's TorchScript denoiser and step, a
plain onnxruntime denoiser under the numpy solver, the runtime's ``step``, ``fused`` and ``loop``
modes (the shipped loop too, int8 variants), OpenVINO, and on a GPU eager CUDA and onnxruntime's
CUDA provider (host loop, IO binding, CUDA graph, loop). ``BACKENDS`` is the table: each row's
device, precision (a reduced one is reported with its per-step error against fp32, ``step_errors``)
and what the machine must have for it to run by default; the CLI, the bench and the report read it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from export.format.artifacts import select
from export.format.graphs import Weights, read_graph
from export.format.manifest import load_manifest, read_verified
from export.verify import relative_rms
from runtime.apps.bench.harness import step_noise
from runtime.feeds import fused_on_host, step_list
from runtime.requests import Plan, SampleRequest
from zoo.solvers import get_solver, solve

if TYPE_CHECKING:
    from runtime.apps.bench.speed import BenchConfig

__all__ = ["Backend", "BACKENDS", "TABLE", "CPU_BACKENDS", "CUDA_BACKENDS", "OPENVINO_BACKENDS", "INT8_BACKENDS",
           "REDUCED_BACKENDS", "UNGUIDED_TWINS", "UNGUIDED", "bench_request", "build_backends", "unguided_backends",
           "step_errors"]


@dataclass(frozen=True)
class Backend:
    """One way of sampling the bench's batch."""

    name: str
    device: str = "cpu"  # "cpu" or "cuda" (CUDA backends run only where torch and onnxruntime both see a GPU)
    precision: str = "fp32"  # "bf16" or "int8": reported with its per-step error against fp32 (step_errors)
    needs: str | None = None  # what this machine must have for it to run by default: "bf16" arithmetic (else autocast
    #                           emulates it; still runs when named), the "openvino" package, an "int8" graph of the solver


BACKENDS = (
    Backend("eager"), Backend("compile"), Backend("torchscript"), Backend("eager-bf16", precision="bf16", needs="bf16"),
    Backend("ort-numpy-step"), Backend("ort-step"), Backend("ort-fused"), Backend("ort-loop"), Backend("ort-loop-shipped"),
    *(Backend(f"ort-int8-{mode}", precision="int8", needs="int8") for mode in ("step", "fused", "loop")),
    Backend("openvino-fused", needs="openvino"), Backend("openvino-loop", needs="openvino"),
    *(Backend(name, device="cuda") for name in ("eager-cuda", "ort-cuda-fused-host", "ort-cuda-fused", "ort-cuda-fused-graph",
                                               "ort-cuda-loop")),
)
TABLE = {b.name: b for b in BACKENDS}
CPU_BACKENDS = tuple(b.name for b in BACKENDS if b.device == "cpu")
CUDA_BACKENDS = tuple(b.name for b in BACKENDS if b.device == "cuda")
OPENVINO_BACKENDS = tuple(b.name for b in BACKENDS if b.needs == "openvino")
INT8_BACKENDS = tuple(b.name for b in BACKENDS if b.precision == "int8")
REDUCED_BACKENDS = tuple(b.name for b in BACKENDS if b.precision != "fp32")

# With a class-conditional model, these backends run again on the same network without classes (num_classes=0,
# batch B where the guided graphs run 2B): the guided step's cost is the ratio of the two, side by side in one run.
UNGUIDED_TWINS = ("eager", "ort-step", "ort-fused", "ort-loop")
UNGUIDED = "-unguided"


def bench_request(cfg: BenchConfig, n: int, settings: dict | None = None) -> SampleRequest:
    """The request every runtime backend of a bench runs (``settings``: a conditional model's labels and guidance)."""
    return SampleRequest(n=n, num_steps=cfg.steps, solver=cfg.solver, seed=cfg.seed, **(settings or {}))


def build_backends(cfg: BenchConfig, bundle: Path, model, schedule, x_T: np.ndarray):
    """name -> zero-argument callable that samples the whole batch and returns x_0 (numpy)."""
    import runtime
    from runtime.apps.evaluate import class_settings

    manifest = load_manifest(bundle)  # hashed once; the backends read their graphs' verified bytes with it
    cond = class_settings(manifest, len(x_T), cfg.guidance)  # {} for an unconditional model
    request = bench_request(cfg, len(x_T), cond)  # every runtime backend's
    plan = request.resolve(manifest, bundle)  # its timesteps and the graphs' conditioning, for the backends outside the runtime
    alphas = schedule.alphas_cumprod.astype(np.float32)
    # the solver around a backend's denoiser (torch or numpy), as the eager samplers run it, unchecked like the graphs
    noise = step_noise(cfg.solver, cfg.steps, x_T, cfg.seed)
    loop = functools.partial(solve, cfg.solver, timesteps=plan.timesteps, alphas=alphas, check=False,
                             noise=None if noise is None else noise.__getitem__)
    out = {**_torch_backends(cfg, bundle, manifest, model, schedule, x_T, plan, noise, loop),
           **_ort_backends(cfg, bundle, manifest, x_T, plan, noise, loop)}
    if any(b in cfg.backends for b in OPENVINO_BACKENDS):
        from runtime.apps.bench.openvino import OpenVINOSampler

        ov = OpenVINOSampler(bundle, threads=cfg.threads)
        for mode in ("fused", "loop"):
            out[f"openvino-{mode}"] = _run(ov, ov.plan(request, mode=mode), x_T, noise)
    import torch

    if torch.cuda.is_available() and runtime.cuda_unavailable_reason() is None:
        out.update(_cuda_backends(cfg, bundle, model, schedule, x_T, plan, noise))
    return {k: v for k, v in out.items() if k in cfg.backends}


def unguided_backends(cfg: BenchConfig, tmp: Path, model, schedule, x_T: np.ndarray) -> dict[str, Callable]:
    """``UNGUIDED_TWINS`` on the same architecture without classes (its own random init: only the cost is compared)."""
    import export
    import zoo

    twin = zoo.build(model.name, **{**asdict(model.config), "num_classes": 0}).eval()
    bundle = export.export_bundle(twin, tmp / "unguided", schedule=schedule, example_shape=x_T.shape[1:], formats=("onnx",),
                                  solvers=(cfg.solver,)).path
    plain = replace(cfg, backends=UNGUIDED_TWINS, classes=0)
    return {f"{k}{UNGUIDED}": v for k, v in build_backends(plain, bundle, twin, schedule, x_T).items()}


def _torch_backends(cfg: BenchConfig, bundle: Path, manifest: dict, model, schedule, x_T: np.ndarray, plan: Plan, noise,
                    loop) -> dict[str, Callable]:
    """Eager torch (fp32, bf16 autocast, torch.compile) and the bundle's TorchScript denoiser and step."""
    import torch

    import zoo
    from zoo.conditioning import guided_eps

    xt = torch.from_numpy(x_T)
    r, graph_cond = plan.request, plan.conditioning
    run = {"timesteps": plan.timesteps, "solver": r.solver, "labels": r.labels, "guidance": r.guidance,
           **({} if noise is None else {"noise": torch.from_numpy(noise)})}

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


def _ort_backends(cfg: BenchConfig, bundle: Path, manifest: dict, x_T: np.ndarray, plan: Plan, noise, loop) -> dict[str, Callable]:
    """onnxruntime on the CPU: the denoiser under a numpy solver, every runtime mode, the shipped loop, int8."""
    import onnxruntime as ort

    import runtime
    from zoo.conditioning import guided_eps

    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    denoiser = read_graph(bundle, manifest, select(manifest["artifacts"], "denoiser"))
    plain = Weights.of_bundle(bundle, manifest).session(denoiser, so)

    def predict(x, t, **conditioning):
        return plain.run(None, {"x": x, "t": t, **conditioning})[0]

    def numpy_eps(x, t):
        tt = np.full(len(x), t, np.int64)
        cond = plan.conditioning
        return predict(x, tt) if cond.conditions is None else guided_eps(predict, x, tt, cond.conditions, cond.feeds)

    out = {"ort-numpy-step": lambda: loop(numpy_eps, x_T)}
    request = plan.request
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


def _cuda_backends(cfg: BenchConfig, bundle: Path, model, schedule, x_T: np.ndarray, plan: Plan, noise) -> dict[str, Callable]:
    """Eager torch on CUDA and onnxruntime's CUDA provider: fused with and without IO binding, CUDA graph, loop."""
    import copy

    import torch

    import runtime
    import zoo

    solver, request = cfg.solver, plan.request
    dev_model = copy.deepcopy(model).to("cuda")  # .to() is in place: keep the CPU backends' model on the CPU
    x_dev = torch.from_numpy(x_T).to("cuda")
    gpu = runtime.load(bundle, provider="cuda")
    graph = runtime.load(bundle, provider="cuda", cuda=runtime.CudaOptions(cuda_graph=True))
    fused = gpu.session(gpu.plan(request, mode="fused").artifact)
    inputs = [i.name for i in fused.get_inputs()]
    noise_dev = {} if noise is None else {"noise": torch.from_numpy(noise).to("cuda")}

    def host_fused():  # no IO binding: x goes to the GPU and back every step
        return fused_on_host(lambda feed, outputs: fused.run(outputs, feed), solver, inputs, x_T, plan.timesteps,
                             gpu.alphas_cumprod, noise=noise, cond=plan.conditioning.feeds)

    return {
        "eager-cuda": lambda: zoo.sample(dev_model, schedule, x_dev, timesteps=plan.timesteps, solver=solver,
                                         labels=request.labels, guidance=request.guidance, **noise_dev).cpu().numpy(),
        "ort-cuda-fused-host": host_fused,
        "ort-cuda-fused": _run(gpu, gpu.plan(request, mode="fused"), x_T, noise),
        "ort-cuda-fused-graph": _run(graph, graph.plan(request, mode="fused"), x_T, noise),
        "ort-cuda-loop": _run(gpu, gpu.plan(request, mode="loop"), x_T, noise),
    }


def step_errors(cfg: BenchConfig, bundle: Path, model, schedule, x_T: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per-step error of the reduced-precision backends: one step from each fp32 state, against fp32.

    Every step's input of the eager fp32 run of ``cfg.solver`` (x and the solver's state; the
    exported graphs match it within their derived bounds) goes through one reduced-precision step;
    the worst step's relative RMS and max |diff| are kept. The final-image drift (errors compounded
    over the run) is reported beside it.
    """
    import torch

    import runtime

    if not names:
        return {}
    solver = get_solver(cfg.solver)
    request = bench_request(cfg, len(x_T))  # unconditional: the network alone, one call per step
    ts = request.resolve(load_manifest(bundle), bundle).timesteps
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
        fused = int8_sampler.session(int8_sampler.plan(request, mode="fused", precision="int8").artifact)
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



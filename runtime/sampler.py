"""The onnxruntime samplers of a bundle (every solver of ``zoo.solvers``): numpy + onnxruntime only, no torch.

Three ways to run the same sampler: ``loop`` (the whole-loop graph, one session run per batch),
``fused`` (the fused step graph once per timestep) and ``step`` (the denoiser graph, then the solver
step graph, per timestep). ``fused`` and ``step`` keep x_t (and DPM-Solver++'s previous x0
prediction) on the device between steps with IO binding. Timesteps, schedule and noise are those
of the eager samplers, so any difference between modes, or against eager torch, comes from the
graphs alone.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort

from export.format.artifacts import select
from export.format.manifest import (
    BundleError,
    check_identity,
    load_manifest,
    read_verified,
    table_spec,
)
from export.loop import build_sampler_graph, loop_is_bounded
from runtime.feeds import bind, by_name, step_feeds, step_list
from runtime.memory import activation_bytes_per_image, fit_batch
from runtime.noise import image_noise
from runtime.providers import (
    CudaOptions,
    ProviderUnavailableError,
    resolve_provider,
    session_providers,
)
from runtime.requests import (
    MODES,
    PRECISIONS,
    Conditioning,
    Mode,
    Plan,
    SampleRequest,
    manifest_key,
)
from runtime.runs import ORT_ERRORS, GraphRun
from zoo.conditioning import guided_eps
from zoo.diffusion import check_finite
from zoo.schedules import make_schedule
from zoo.validate import check_int, first_line

__all__ = ["MODES", "Mode", "PRECISIONS", "Sampler", "load", "Plan", "SampleRequest"]

log = logging.getLogger(__name__)

# callback(i, t, eps or None, x_prev) after each step, for parity reports; eps is None where the
# mode does not expose it (fused), and the loop mode reports only its final x_0.
StepCallback = Callable[[int, int, "np.ndarray | None", np.ndarray], None]


def load(
    bundle_dir: str | os.PathLike,
    provider: str = "auto",
    *,
    strict: bool = False,
    cuda: CudaOptions | None = None,
    threads: int | None = None,
    precision: str = SampleRequest.precision,
) -> Sampler:
    """Verify a bundle's hashes, pick the execution provider and return its sampler.

    Args:
        provider: "auto" (CUDA if it really loads here, else CPU with one warning saying why),
            "cuda" (an error if CUDA cannot load) or "cpu".
        strict: with "auto", make a CUDA fallback an error too.
        cuda: CUDA provider options (device, cuDNN algo search, TF32, memory limit, CUDA graph).
        threads: intra-op threads of every session (default: onnxruntime's choice).
        precision: "fp32", or "int8" for the bundle's int8 variants (exported with ``int8=True``);
            int8 runs on the CPU provider (onnxruntime's CUDA provider has no int8 convolution).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {list(PRECISIONS)}")
    threads = None if threads is None else check_int("threads", threads, 1)
    manifest = load_manifest(bundle_dir)  # hashes first: no session ever sees an unverified file
    if precision != "fp32":
        if not any(a["precision"] == precision for a in manifest["artifacts"].values()):
            raise ValueError(f"bundle {str(bundle_dir)!r} has no {precision} artifacts: re-export it with int8=True "
                             "(diffzoo export --int8)")
        if provider == "cuda":
            raise ValueError("precision='int8' runs on the CPU provider only (onnxruntime's CUDA provider has no int8 "
                             "convolution); use provider='cpu' or 'auto'")
        provider = "cpu"
    device = resolve_provider(provider, strict)
    return Sampler(Path(bundle_dir), manifest, device, cuda or CudaOptions(), threads, strict or provider == "cuda", precision)


class Sampler:
    """Samples images from a verified bundle; build it with ``runtime.load``."""

    def __init__(
        self, path: Path, manifest: dict, device: str, cuda: CudaOptions, threads: int | None, strict: bool, precision: str = SampleRequest.precision
    ):
        self.path = path
        self.manifest = manifest
        self.device = device  # "cuda" or "cpu"
        self.cuda = cuda
        self.threads = threads
        self.strict = strict
        self.schedule = make_schedule(**manifest["schedule"])
        self.alphas_cumprod = self.schedule.alphas_cumprod.astype(np.float32)  # cast once, as eager does
        self.shape: tuple[int, int, int] = tuple(manifest["data"]["shape"])
        self._sessions: dict[tuple[str, bool], ort.InferenceSession] = {}
        # (artifact, batch size) -> the CUDA-graph path's device buffers and bound runs (_run_fused_cuda_graph)
        self._graphs: dict[tuple[str, int], tuple] = {}
        self.optimize_cpu_loop = True  # see _cpu_loop_model; False runs the bundle's sampler.onnx as shipped
        self.precision = precision  # "int8" selects the bundle's int8 artifacts where it has them
        self._activations: dict[str, int] = {}  # artifact -> activation bytes per image (runtime.memory)
        self._key = manifest_key(manifest)  # the plans this sampler runs were resolved against this manifest

    # --- sessions ---------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions really use (checked after creation)."""
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "cuda" else ["CPUExecutionProvider"]

    @property
    def artifacts_in_use(self) -> list[str]:
        """The bundle artifacts this sampler has built sessions for so far (what has run, or will)."""
        return sorted({artifact for artifact, _ in self._sessions})

    @property
    def _ort_device(self) -> tuple[str, int]:
        return ("cuda", self.cuda.device_id) if self.device == "cuda" else ("cpu", 0)

    def _onnx_bytes(self, artifact: str) -> bytes:
        """The artifact's ONNX graph as the verified bytes: what is checked is exactly what runs.

        Hashed, and the graph's own stamped identity checked against the manifest's entry.
        """
        files = self.manifest["artifacts"].get(artifact, {}).get("files", {})
        if "onnx" not in files:
            raise ValueError(f"bundle {str(self.path)!r} has no ONNX file for {artifact!r}: re-export it with formats including 'onnx'")
        data = read_verified(self.path, self.manifest, files["onnx"])
        check_identity(data, artifact, self.manifest, self.path)
        return data

    def _options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: in `step` mode two sessions alternate, and the idle one's
        # spinning threads took the cores from the busy one (~1.6x slower on 2 cores, measured).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            so.intra_op_num_threads = self.threads
        return so

    def _cpu_loop_model(self, artifact: str) -> bytes:
        """The whole-loop graph rebuilt around a CPU-optimised fused step.

        onnxruntime's CPU layout optimisation (NCHWc blocked convolutions) is applied to a
        top-level graph but not inside a ``Loop`` body, which makes the bundle's ``sampler.onnx``
        ~1.3x slower per step than the fused step on the CPU provider. So the (hash-verified)
        fused step is optimised here, for this machine, and becomes the body of the same Loop.
        """
        import tempfile

        entry = self.manifest["artifacts"][artifact]
        self._onnx_bytes(artifact)  # not run, but its identity names the body it was built around
        fused = self._onnx_bytes(entry["body"])
        with tempfile.TemporaryDirectory() as tmp:
            so = self._options()
            so.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
            so.log_severity_level = 3  # its "hardware specific" warning is the point: built here, used here
            try:  # the optimised copy is about the graph's size: a full disk or a file-size limit shows here, named
                Path(so.optimized_model_filepath).write_bytes(fused)
            except OSError as e:
                raise OSError(f"cannot write the CPU-optimised loop body to the temporary file "
                              f"{so.optimized_model_filepath!r}: {e.strerror or e}") from None
            try:
                ort.InferenceSession(fused, sess_options=so, providers=["CPUExecutionProvider"])
                body = onnx.load(so.optimized_model_filepath)
            except ORT_ERRORS as e:
                first = first_line(e, 300)
                raise BundleError(f"the {entry['body']!r} graph of the bundle {str(self.path)!r} cannot be loaded by "
                                  f"onnxruntime, or its CPU-optimised copy not written to {so.optimized_model_filepath!r}: "
                                  f"{first}") from None
        spec = table_spec(self.manifest, artifact)
        if spec is None or spec.body != entry["body"]:
            raise BundleError(f"{artifact!r} of the bundle {str(self.path)!r} is not a whole-loop graph of the artifact "
                              "table: its loop cannot be rebuilt here")
        return build_sampler_graph(body, spec).SerializeToString()

    def session(self, artifact: str, cuda_graph: bool = False) -> ort.InferenceSession:
        """The session of bundle artifact ``artifact``, built once from its verified bytes.

        If onnxruntime creates it without CUDA on a CUDA sampler, that is an error when ``strict``,
        else the sampler moves to the CPU provider for good (one warning saying why).
        """
        key = (artifact, cuda_graph)
        if key not in self._sessions:
            sess = self._new_session(artifact, cuda_graph)
            if self.device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
                self._fall_back_to_cpu(f"onnxruntime created the {artifact!r} session without CUDA (providers "
                                       f"{sess.get_providers()}); see its log above")
                key, sess = (artifact, False), self._new_session(artifact, False)
            self._sessions[key] = sess
        return self._sessions[key]

    def _new_session(self, artifact: str, cuda_graph: bool) -> ort.InferenceSession:
        loop = self.manifest["artifacts"][artifact]["kind"] == "sampler"
        if self.device == "cpu" and loop and self.optimize_cpu_loop:
            model: bytes = self._cpu_loop_model(artifact)  # its Loop is built here, bounded by the timesteps
        else:
            model = self._onnx_bytes(artifact)
            if loop and not loop_is_bounded(onnx.load_model_from_string(model)):
                raise BundleError(f"the {artifact!r} graph of the bundle {str(self.path)!r} does not bound its Loop by the "
                                  "timesteps it is given: not a graph diffzoo exported; refused")
        try:
            return ort.InferenceSession(model, sess_options=self._options(),
                                        providers=session_providers(self.device, self.cuda, cuda_graph))
        except ORT_ERRORS as e:  # a graph that passed its hash but not onnxruntime: an unknown op, a bad model
            first = first_line(e, 300)
            raise BundleError(f"the {artifact!r} graph of the bundle {str(self.path)!r} cannot be loaded by onnxruntime: "
                              f"{first}") from None

    def _fall_back_to_cpu(self, why: str) -> None:
        if self.strict:
            raise ProviderUnavailableError(why)
        log.warning("%s: falling back to the CPU provider", why)
        self.device = "cpu"
        self._sessions.clear()
        self._graphs.clear()

    # --- sampling ---------------------------------------------------------------------------
    def plan(self, request: SampleRequest | None = None, /, **settings: Any) -> Plan:
        """``request`` (or every default) with ``settings`` resolved against this bundle: the ``Plan`` that
        ``sample`` and ``run_batch`` run, or one ``ValueError`` naming the bad value (``SampleRequest.resolve``).

        A request at the default precision takes this sampler's (``runtime.load(precision=)``); one naming
        another is refused.
        """
        if "precision" not in settings and (request is None or request.precision == SampleRequest.precision):
            settings["precision"] = self.precision
        request = SampleRequest.of(request, **settings)
        if request.precision != self.precision:
            raise ValueError(f"the request asks for precision {request.precision!r}, but this sampler runs "
                             f"{self.precision!r}: runtime.load(..., precision={request.precision!r})")
        return request.resolve(self.manifest, self.path)

    def own(self, plan: Plan) -> Plan:
        """``plan`` if it was resolved against this bundle's manifest; ``ValueError`` otherwise."""
        if plan.bundle_key != self._key or plan.request.precision != self.precision:
            raise ValueError(f"the plan was resolved against the bundle {plan.bundle!r} ({plan.request.precision}), not "
                             f"this sampler's {str(self.path)!r} ({self.precision}): resolve it with Sampler.plan")
        return plan

    def activation_bytes(self, plan: Plan) -> int:
        """Activation bytes one image adds to a batch of the plan's graphs (``runtime.memory``), once per artifact."""
        name = (select(self.manifest["artifacts"], "fused_step", plan.solver.name, plan.stochastic, self.precision)
                or plan.denoiser or plan.artifact)
        if name not in self._activations:
            c, h, w = self.shape
            self._activations[name] = activation_bytes_per_image(self._onnx_bytes(name), h, w)
        return self._activations[name]

    def fit_batch(self, plan: Plan, n: int, batch: int) -> int:
        """The batch size up to ``batch`` that fits here beside n results of ``plan`` (``runtime.memory.fit_batch``)."""
        return fit_batch(self.shape, n, batch, len(plan.timesteps), plan.stochastic, self.activation_bytes(plan),
                         f"{n} images of {self.shape}", "sample fewer images per call (--n, --shard)")

    def sample(self, request: SampleRequest | Plan | int | None = None, /, *, progress: bool = False,
               **settings: Any) -> np.ndarray:
        """Sample the images of a request: a ``SampleRequest``, a ``Plan`` of this bundle, or keywords of
        ``SampleRequest`` (``sample(16, num_steps=20, solver="dpmpp_2m")``: the first number is ``n``).

        Images ``start .. start+n-1`` of the stream ``seed``. For a class-conditional bundle, ``labels``
        (one class or one per image, indices or the manifest's class names; none: the null class) and
        ``guidance`` (one w in 0..``MAX_GUIDANCE`` or one per image, default 1) steer each image.
        ``solver`` is one of ``zoo.solvers.SOLVERS`` (``zoo.solvers.solver_help()`` says what each is);
        eta > 0 only where its row takes eta. Every default is ``SampleRequest``'s.

        Returns:
            float32 array (n, C, H, W) in [-1, 1]. Image k depends only on (seed, k, solver,
            timesteps, eta, its label and guidance), never on the batch size, the mode or which
            shard computed it.

        Raises:
            ValueError: a setting this bundle refuses, named (``SampleRequest.resolve``).
            NonFiniteSampleError: a batch came out with NaN or inf (never returned silently).
        """
        if isinstance(request, Plan):
            if settings:
                raise TypeError(f"a plan is resolved already: pass its settings ({sorted(settings)}) to Sampler.plan")
            plan = self.own(request)
        elif isinstance(request, (int, np.integer)) and not isinstance(request, bool):
            plan = self.plan(n=request, **settings)
        else:
            plan = self.plan(request, **settings)
        r = plan.request
        asked = min(r.n, r.batch_size)
        bs = self.fit_batch(plan, r.n, asked)
        if bs < asked:
            log.warning("batches of %d images do not fit in the memory available here: sampling in batches of %d "
                        "(the images are the same: image k depends only on the seed and k)", asked, bs)
        starts = range(r.start, r.start + r.n, bs)
        if progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"sample ({r.solver}, {r.mode}, {self.device}, {self.precision})", unit="batch")
        out = []
        for b0 in starts:
            idx = range(b0, min(b0 + bs, r.start + r.n))
            x_T, noise = image_noise(r.seed, idx, self.shape, len(plan.timesteps), stochastic=plan.stochastic)
            part = plan.conditioning.rows(slice(idx.start - r.start, idx.stop - r.start))
            x = self.run_batch(plan, x_T, noise, conditioning=part)
            check_finite(x, f"images {idx.start}..{idx.stop - 1} ({r.solver}, {r.mode} mode, {r.num_steps} steps)")
            out.append(x)
        return np.concatenate(out)

    def run_batch(self, plan: Plan, x_T: np.ndarray, noise: np.ndarray | None = None, *,
                  conditioning: Conditioning | None = None, callback: StepCallback | None = None) -> np.ndarray:
        """One batch of ``plan`` (``Sampler.plan``): x_T (B, C, H, W) float32, noise (S, B, C, H, W) float32 when the
        plan's solver draws noise (``plan.stochastic``).

        ``conditioning``: the batch's rows (``plan.conditioning.rows(...)``); default the plan's own, which must then
        be for B images. The plan was checked when it was made: only the arrays are checked here.
        """
        plan = self.own(plan)
        x_T, noise = self._check_batch(x_T, noise, plan)
        cond = plan.conditioning if conditioning is None else conditioning
        if cond.n != len(x_T):
            raise ValueError(f"the conditioning is for {cond.n} images, the batch has {len(x_T)}: pass "
                             "conditioning=plan.conditioning.rows(...) for the batch's images")
        run = GraphRun(plan.artifact, self.path)
        if plan.mode == "loop":
            sess = self.session(plan.artifact)
            feed = {"x_T": x_T, "timesteps": plan.timesteps, **cond.feeds}
            noise_feed = {"noise": noise, "eta": np.array(plan.eta, np.float32)}
            feed.update({n: noise_feed[n] for n in plan.solver.noise_inputs(plan.stochastic)})
            (x0,) = run.interruptibly(partial(run, sess.run, ["x_0"], by_name(sess, feed)))
            if callback is not None:
                callback(len(plan.timesteps) - 1, int(plan.timesteps[-1]), None, x0)
            return self._checked_output(x0, x_T, plan.artifact)
        if plan.mode == "fused" and self.device == "cuda" and self.cuda.cuda_graph:
            work = partial(self._run_fused_cuda_graph, run, plan, x_T, noise, callback, cond.feeds)
        else:
            work = partial(self._run_per_step, run, plan, x_T, noise, callback, cond)
        return self._checked_output(run.interruptibly(work), x_T, plan.artifact)

    def _checked_output(self, x: np.ndarray, x_T: np.ndarray, artifact: str) -> np.ndarray:
        """A graph's result must have x_T's shape and dtype, as its manifest entry declares."""
        if x.shape != x_T.shape or x.dtype != np.float32:
            raise BundleError(f"the {artifact!r} graph of the bundle {str(self.path)!r} returned {x.dtype} {x.shape} for x_T "
                              f"{x_T.shape}: not the graph its manifest declares")
        return x

    def _check_batch(self, x_T, noise, plan: Plan):
        """``run_batch``'s arrays as the graphs take them, or one ``ValueError``/``TypeError`` naming the bad one."""
        x_T = np.asarray(x_T)
        if x_T.ndim != 4 or tuple(x_T.shape[1:2]) != self.shape[:1] or x_T.dtype != np.float32:
            raise TypeError(f"x_T has shape {x_T.shape} and dtype {x_T.dtype}: expected float32 (B, {self.shape[0]}, H, W)")
        if plan.stochastic:
            noise = np.asarray(noise) if noise is not None else None
            want = (len(plan.timesteps), *x_T.shape)
            if noise is None or noise.shape != want or noise.dtype != np.float32:
                got = "none" if noise is None else f"{noise.dtype} {noise.shape}"
                raise TypeError(f"noise is {got}: a stochastic run needs float32 noise of shape (S, B, C, H, W) = {want}")
        return np.ascontiguousarray(x_T), noise

    def _run_per_step(self, run: GraphRun, plan: Plan, x_T, noise, callback, cond: Conditioning) -> np.ndarray:
        """``fused``: the fused step per timestep; ``step``: the denoiser, then the solver step.

        The carried values (x, and DPM-Solver++'s x0 prediction) stay on the device between steps; their shapes are
        checked after every step (a graph whose output grows is stopped at once, not fed back).
        """
        dev, dev_id = self._ort_device
        b = x_T.shape[0]
        sess = self.session(run.artifact)
        io = sess.io_binding()
        inputs = [i.name for i in sess.get_inputs()]
        pairs = plan.state  # (input, output) of x and the solver's state: x_t -> x_prev[, x0_last -> x0]
        first = {"x_t": x_T, **{i: np.zeros_like(x_T) for i, _ in pairs[1:]}}  # the state starts at zeros
        state = {i: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(first[i]), dev, dev_id) for i, _ in pairs}
        if plan.mode == "step":
            den = self.session(plan.denoiser)
            io_den = den.io_binding()
        steps = step_list(plan.timesteps)
        for i, t in enumerate(plan.timesteps):
            host = step_feeds(i, steps, b, inputs, self.alphas_cumprod, noise, plan.eta, cond.feeds)
            eps_host = None
            if plan.mode == "step" and cond.conditions:  # guided on the host: the denoiser on the 2B batch, then guide
                eps_host = guided_eps(lambda xx, tt, **c: run(den.run, ["eps"], {"x": xx, "t": tt, **c})[0],
                                      state["x_t"].numpy(), np.full(b, t, np.int64), cond.conditions, cond.feeds)
                bind(io, state, {**host, "eps": eps_host})
            elif plan.mode == "step":
                bind(io_den, {"x": state["x_t"]}, {"t": np.full(b, t, np.int64)})
                io_den.bind_output("eps", dev, dev_id)
                run(den.run_with_iobinding, io_den)
                eps = io_den.get_outputs()[0]
                bind(io, {**state, "eps": eps}, host)
                if callback is not None:
                    eps_host = eps.numpy()
            else:
                bind(io, state, host)
            for _, name in pairs:
                io.bind_output(name, dev, dev_id)
            run(sess.run_with_iobinding, io)
            state = dict(zip((name for name, _ in pairs), io.get_outputs(), strict=True))  # outputs in binding order
            run.check_shapes(i, state, x_T.shape)
            if callback is not None:
                callback(i, int(t), eps_host, state["x_t"].numpy())
        return state["x_t"].numpy()

    def _run_fused_cuda_graph(self, run: GraphRun, plan: Plan, x_T, noise, callback, cond) -> np.ndarray:
        """The fused step replayed as CUDA graphs: fixed device buffers, two graphs ping-ponging the state.

        onnxruntime captures a graph on its first run per ``gpu_graph_id`` and replays it after, on the
        device addresses it was captured with. So each batch size gets its own two graph ids and its own
        buffers, kept for the sampler's life (``_graphs``); every call writes its values into them in
        place (x_T, the zero state, eta, labels and guidance; t and the noise per step).
        """
        artifact = run.artifact
        sess = self.session(artifact, cuda_graph=True)
        b = x_T.shape[0]
        inputs = [i.name for i in sess.get_inputs()]
        pairs = plan.state
        steps = step_list(plan.timesteps)
        first = {"x_t": x_T, **{i: np.zeros_like(x_T) for i, _ in pairs[1:]}}  # the state starts at zeros
        host0 = step_feeds(0, steps, b, inputs, self.alphas_cumprod, noise, plan.eta, cond)
        key = (artifact, b)
        if key not in self._graphs:
            self._graphs[key] = self._capture_buffers(sess, pairs, first, host0, 2 * len(self._graphs))
        bufs, shared, runs = self._graphs[key]
        for i, _ in pairs:
            bufs[i][0].update_inplace(np.ascontiguousarray(first[i]))
        for name, v in host0.items():
            shared[name].update_inplace(np.ascontiguousarray(v))
        for i, t in enumerate(plan.timesteps):
            if i:
                for name, v in step_feeds(i, steps, b, inputs, self.alphas_cumprod, noise, plan.eta, cond).items():
                    if name not in ("eta", *cond):  # constants of the run, written above
                        shared[name].update_inplace(np.ascontiguousarray(v))
            io, ro = runs[i % 2]
            run(sess.run_with_iobinding, io, options=ro)
            if callback is not None:
                callback(i, int(t), None, bufs["x_t"][(i + 1) % 2].numpy())
        return bufs["x_t"][len(plan.timesteps) % 2].numpy()

    def _capture_buffers(self, sess, pairs, first: dict[str, np.ndarray], host0: dict[str, np.ndarray], base_id: int):
        """One batch size's device buffers and its two bound runs (graph ids base_id + 1, + 2)."""
        dev_id = self.cuda.device_id

        def dev_array(a: np.ndarray) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", dev_id)

        bufs = {i: [dev_array(first[i]), dev_array(np.empty_like(first[i]))] for i, _ in pairs}
        shared = {n: dev_array(v) for n, v in host0.items()}  # t, t_prev[, t_last, noise, eta, labels, guidance]
        runs = []
        for g in range(2):  # graph g reads buffer g and writes buffer 1 - g
            io = sess.io_binding()
            for name, v in {**{i: bufs[i][g] for i, _ in pairs}, **shared}.items():
                io.bind_ortvalue_input(name, v)
            for i, o in pairs:
                io.bind_ortvalue_output(o, bufs[i][1 - g])
            ro = ort.RunOptions()
            ro.add_run_config_entry("gpu_graph_id", str(base_id + g + 1))
            runs.append((io, ro))
        return bufs, shared, runs



"""The onnxruntime sampler of a bundle (every solver of ``zoo.solvers``): numpy + onnxruntime only, no torch.

``runtime.load`` verifies the bundle and picks the provider; ``Sampler`` resolves requests into
plans (``runtime.requests``), sizes batches to the memory here, draws each image's noise and runs
each batch in the plan's mode (``runtime.modes``: ``loop``, ``fused`` or ``step``) on the bundle's
sessions (``runtime.sessions``). Timesteps, schedule and noise are those of the eager samplers, so
any difference between modes, or against eager torch, comes from the graphs alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export.format.artifacts import select
from export.format.manifest import BundleError, load_manifest
from runtime.memory import activation_bytes_per_image, fit_batch
from runtime.modes import StepCallback, run_mode
from runtime.noise import image_noise
from runtime.providers import CudaOptions, resolve_provider
from runtime.requests import (
    MODES,
    PRECISIONS,
    Conditioning,
    Mode,
    Plan,
    SampleRequest,
    manifest_key,
)
from runtime.sessions import Sessions
from zoo.diffusion import check_finite
from zoo.schedules import make_schedule
from zoo.validate import check_int

__all__ = ["MODES", "Mode", "PRECISIONS", "Sampler", "load", "Plan", "SampleRequest"]

log = logging.getLogger(__name__)

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
        self.sessions = Sessions(path, manifest, device, cuda, threads, strict)
        self.schedule = make_schedule(**manifest["schedule"])
        self.alphas_cumprod = self.schedule.alphas_cumprod.astype(np.float32)  # cast once, as eager does
        self.shape: tuple[int, int, int] = tuple(manifest["data"]["shape"])
        self.precision = precision  # "int8" selects the bundle's int8 artifacts where it has them
        self._activations: dict[str, int] = {}  # artifact -> activation bytes per image (runtime.memory)
        self._key = manifest_key(manifest)  # the plans this sampler runs were resolved against this manifest

    # --- its sessions (runtime.sessions) -----------------------------------------------------
    @property
    def device(self) -> str:
        """"cuda" or "cpu": where the sessions run ("cpu" for good after a CUDA fallback)."""
        return self.sessions.device

    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions really use (checked after creation)."""
        return self.sessions.providers

    @property
    def artifacts_in_use(self) -> list[str]:
        """The bundle artifacts this sampler has built sessions for so far (what has run, or will)."""
        return self.sessions.artifacts_in_use

    @property
    def optimize_cpu_loop(self) -> bool:
        """Whether the CPU provider runs the whole loop rebuilt around the CPU-optimised fused step (default), or the
        bundle's whole-loop graph as shipped."""
        return self.sessions.optimize_cpu_loop

    @optimize_cpu_loop.setter
    def optimize_cpu_loop(self, value: bool) -> None:
        self.sessions.optimize_cpu_loop = value

    def session(self, artifact: str, cuda_graph: bool = False) -> ort.InferenceSession:
        """The session of bundle artifact ``artifact``, built once from its verified bytes (``Sessions.session``)."""
        return self.sessions.session(artifact, cuda_graph)

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
            self._activations[name] = activation_bytes_per_image(self.sessions.onnx_bytes(name), h, w)
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
        return self._checked_output(run_mode(self.sessions, self.alphas_cumprod, plan, x_T, noise, cond, callback), x_T,
                                    plan.artifact)

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

"""Numeric parity of the onnxruntime sampler against the eager torch sampler, step by step.

The eager model is rebuilt from the bundle's safetensors weights; both sides start from the same
x_T and per-step noise (``runtime.noise``) and visit the same timesteps, so every difference comes
from the exported graphs and the execution provider. Imports torch (it is the reference).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from export.format.manifest import load_manifest
from export.verify import check_atol, derived_atol
from runtime.noise import image_noise
from runtime.providers import CudaOptions
from runtime.requests import PARITY_BATCH, SampleRequest
from runtime.sampler import MODES, load

__all__ = ["parity", "ParityReport", "ModeParity", "StepDiff"]


@dataclass
class StepDiff:
    step: int
    t: int
    eps_max: float | None  # None where the mode does not expose eps
    eps_mean: float | None
    x_max: float
    x_mean: float


@dataclass
class ModeParity:
    mode: str
    steps: list[StepDiff]
    final_max: float
    final_mean: float
    atol: float
    passed: bool


@dataclass
class ParityReport:
    bundle: str
    providers: list[str]
    eager_device: str
    tf32: str  # what was done about TF32 on this run
    reference_error: float  # max |eager float32 - eager float64| on the final image: what the bound is derived from
    num_steps: int
    batch: int
    seed: int
    eta: float
    solver: str = SampleRequest.solver
    labels: list[int] | None = None  # a class-conditional bundle's label per image (None: the null class)
    guidance: list[float] | None = None  # and guidance w per image
    modes: list[ModeParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.modes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def format_table(self, every: int = 10) -> str:
        """A readable table: the first steps, every ``every``-th and the last, then a summary per mode."""
        lines = [
            f"parity of {self.bundle}: onnxruntime {self.providers[0]} vs eager torch on {self.eager_device}",
            f"{self.solver}, {self.num_steps} steps, batch {self.batch}, eta {self.eta}, seed {self.seed}; {self.tf32}",
            *([f"labels {self.labels}, guidance {self.guidance}"] if self.labels is not None else []),
            "",
            f"{'mode':<6} {'step':>4} {'t':>5} {'max|d eps|':>11} {'mean|d eps|':>11} {'max|d x|':>10} {'mean|d x|':>10}",
        ]
        fmt = lambda v: f"{v:.2e}" if v is not None else "-"  # noqa: E731
        for m in self.modes:
            for s in m.steps:
                if s.step < 2 or s.step % every == 0 or s.step == self.num_steps - 1:
                    lines.append(f"{m.mode:<6} {s.step:>4} {s.t:>5} {fmt(s.eps_max):>11} {fmt(s.eps_mean):>11} "
                                 f"{fmt(s.x_max):>10} {fmt(s.x_mean):>10}")
        lines += ["", f"bound: derived from eager float32's own error against float64 ({self.reference_error:.1e}), "
                      "see export/verify.py", f"{'mode':<6} {'final max|d|':>13} {'mean|d|':>9} {'atol':>9}  result"]
        for m in self.modes:
            lines.append(f"{m.mode:<6} {m.final_max:>13.2e} {m.final_mean:>9.2e} {m.atol:>9.1e}  {'PASS' if m.passed else 'FAIL'}")
        return "\n".join(lines)


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()), float(d.mean())


def _eager(model, schedule, x_T: np.ndarray, noise: np.ndarray | None, device: str, kwargs: dict):
    """Eager ``zoo.sample`` in float32 (recording every step's eps and x) and float64, TF32 off."""
    import torch

    import zoo

    eager_eps, eager_x = [], []
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        x0 = zoo.sample(
            model.to(device), schedule, torch.from_numpy(x_T).to(device),
            noise=None if noise is None else torch.from_numpy(noise).to(device),
            callback=lambda i, t, eps, x: (eager_eps.append(eps.cpu().numpy()), eager_x.append(x.cpu().numpy())), **kwargs,
        ).cpu().numpy()
        x0_64 = zoo.sample(
            model.double(), schedule, torch.from_numpy(x_T).to(device, torch.float64),
            noise=None if noise is None else torch.from_numpy(noise).to(device, torch.float64), **kwargs,
        ).cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    return x0, x0_64, eager_eps, eager_x


def parity(
    bundle_dir: str | os.PathLike,
    provider: str = "auto",
    *,
    request: SampleRequest | None = None,
    batch: int | None = None,
    modes: Iterable[str] = MODES,
    strict: bool = False,
    atol: float | None = None,
    **settings: Any,
) -> ParityReport:
    """Run the eager sampler (``zoo.sample``) and the onnxruntime sampler side by side; see ``ParityReport``.

    The request is ``request`` or ``SampleRequest``'s keywords (``num_steps``, ``solver``, ``eta``, ``spacing``,
    ``seed``, ``timesteps``, ``labels``, ``guidance``), its ``n`` the ``batch`` compared (default
    ``PARITY_BATCH``), run in each of ``modes``. Both sides take the plan's timesteps, noise (a solver
    that draws noise gets the same per-image noise on both sides) and conditioning (none: the null class).

    Each mode's final image must lie within ``atol`` of eager float32: by default the bound is
    derived from eager float32's own error against eager float64 on the same inputs
    (``export.verify.derived_atol``), so it holds for trained models as for random ones.
    """
    import torch

    from zoo.resources import activation_bytes, check_fits
    from zoo.weights import load_weights

    modes = list(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {bad or modes!r}: expected a subset of {list(MODES)}")
    if "mode" in settings:
        raise TypeError("parity runs every mode of modes=: pass modes=[...], not mode=")
    n = {} if batch is None and request is not None else {"n": PARITY_BATCH if batch is None else batch}
    request = SampleRequest.of(request, **n, **settings)
    atol = check_atol(atol)
    # every mode's plan resolved before a provider is chosen; load() verifies the manifest they were resolved against
    unverified = load_manifest(bundle_dir, verify=False)
    plans = {mode: replace(request, mode=mode).resolve(unverified, bundle_dir) for mode in modes}
    # TF32 alone moves fp32 results by ~1e-3: off on both sides for a parity run.
    sampler = load(bundle_dir, provider=provider, strict=strict, cuda=CudaOptions(tf32=False))
    plans = {mode: sampler.own(p) for mode, p in plans.items()}
    plan = plans[modes[0]]  # the timesteps, noise and conditioning of every mode's
    r = plan.request  # checked
    ts, cond, batch = plan.timesteps, plan.conditioning, r.n
    c, h, w = sampler.shape
    hidden = sampler.manifest["model"]["config"].get("hidden", c)
    check_fits(4 * batch * c * h * w * (2 * len(ts) + 6) + activation_bytes(batch, c, hidden, h, w),
               f"parity of {batch} images over {len(ts)} steps (every step's eps and x kept)", "use a smaller --batch")
    # load() has verified every hash already; read the weights without hashing the bundle again.
    model, schedule, _ = load_weights(sampler.path / sampler.manifest["weights"])

    x_T, noise = image_noise(r.seed, range(r.start, r.start + batch), sampler.shape, len(ts),
                             stochastic=plan.stochastic)
    device = "cuda" if sampler.device == "cuda" and torch.cuda.is_available() else "cpu"
    tf32_note = "TF32 off (onnxruntime use_tf32=0, torch allow_tf32=False)" if sampler.device == "cuda" else "fp32 on CPU (no TF32)"
    baked = {k: sampler.manifest[k] for k in ("clip_range", "eps_rule")}  # the step settings the bundle's graphs compute
    x0, x0_64, eager_eps, eager_x = _eager(model, schedule, x_T, noise, device,
                                           dict(timesteps=ts.copy(), solver=plan.solver.name, eta=plan.eta,
                                                labels=cond.labels, guidance=cond.guidance, **baked))
    bound, ref_err = derived_atol({"x_0": x0}, {"x_0": x0_64})
    bound = bound if atol is None else float(atol)

    listed = lambda a: None if a is None else a.tolist()  # noqa: E731
    report = ParityReport(str(bundle_dir), sampler.providers, device, tf32_note, ref_err, len(ts), batch, r.seed, plan.eta,
                          plan.solver.name, listed(cond.labels), listed(cond.guidance))
    for mode in modes:
        steps: list[StepDiff] = []

        def record(i, t, eps, x):
            e = _diff(eps, eager_eps[i]) if eps is not None else (None, None)
            steps.append(StepDiff(i, t, *e, *_diff(x, eager_x[i])))

        out = sampler.run_batch(plans[mode], x_T, noise, callback=record)
        fmax, fmean = _diff(out, x0)
        report.modes.append(ModeParity(mode, steps, fmax, fmean, bound, bool(np.isfinite(fmax) and fmax <= bound)))
    return report

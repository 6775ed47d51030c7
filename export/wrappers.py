"""The torch modules that are exported besides the denoiser (the solver steps and fused steps), and each artifact's reference.

They call ``zoo.diffusion.ddim_step`` / ``dpmpp_2m_step`` themselves, so every exported graph
computes exactly the math of the eager samplers; only the inputs differ. Noise and the solver's
state (the previous x0 prediction) are always inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export.format.artifacts import ArtifactSpec
from zoo.diffusion import DEFAULT_EPS_RULE, ddim_step, dpmpp_2m_step, guided_eps
from zoo.samplers import sample
from zoo.schedules import Schedule
from zoo.solvers import alpha_bars

__all__ = ["DDIMStep", "FusedStep", "DPMStep", "FusedDPMStep", "GuidedFusedStep", "GuidedFusedDPMStep", "WRAPPERS",
           "reference"]


class DDIMStep(nn.Module):
    """``(x_t, eps, alpha_bar_t, alpha_bar_prev[, noise, eta]) -> x_prev``; alphas are per-sample (B,)."""

    def __init__(self, stochastic: bool, clip_range: float | None = 1.0, eps_rule: str = DEFAULT_EPS_RULE) -> None:
        super().__init__()
        self.stochastic = stochastic
        self.clip_range = clip_range
        self.eps_rule = eps_rule

    def forward(self, x_t, eps, alpha_bar_t, alpha_bar_prev, noise=None, eta=None):
        rule = {"clip_range": self.clip_range, "eps_rule": self.eps_rule}
        if self.stochastic:
            return ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta=eta, noise=noise, **rule)
        return ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, **rule)


class FusedStep(nn.Module):
    """``(x_t, t, t_prev[, noise, eta]) -> x_prev``: the denoiser and the DDIM update in one graph.

    The schedule's alpha-bar table is a constant of the graph, looked up by timestep with the step
    rule of ``zoo.solvers.alpha_bars`` (``t_prev < 0``: the last step).
    """

    def __init__(self, model: nn.Module, alphas_cumprod: np.ndarray, stochastic: bool, clip_range: float | None = 1.0,
                 eps_rule: str = DEFAULT_EPS_RULE):
        super().__init__()
        self.model = model
        self.register_buffer("alphas_cumprod", _alpha_table(alphas_cumprod))
        self.step = DDIMStep(stochastic, clip_range, eps_rule)

    def forward(self, x_t, t, t_prev, noise=None, eta=None):
        a_t, a_prev, _ = alpha_bars(self.alphas_cumprod, t, t_prev)  # (B,) each
        eps = self.model(x_t, t)
        return self.step(x_t, eps, a_t, a_prev, noise, eta)


def _alpha_table(alphas_cumprod: np.ndarray) -> torch.Tensor:
    """The float64 schedule cast once to float32, exactly as the eager samplers do."""
    return torch.from_numpy(np.array(alphas_cumprod, dtype=np.float64)).float()


class DPMStep(nn.Module):
    """``(x_t, eps, x0_last, alpha_bar_t, alpha_bar_prev, alpha_bar_last) -> (x_prev, x0)``: DPM-Solver++(2M)."""

    def __init__(self, stochastic: bool = False, clip_range: float | None = 1.0, eps_rule: str = DEFAULT_EPS_RULE) -> None:
        super().__init__()
        assert not stochastic, "DPM-Solver++(2M) is deterministic"
        self.clip_range = clip_range
        self.eps_rule = eps_rule

    def forward(self, x_t, eps, x0_last, alpha_bar_t, alpha_bar_prev, alpha_bar_last):
        return dpmpp_2m_step(x_t, eps, x0_last, alpha_bar_t, alpha_bar_prev, alpha_bar_last, clip_range=self.clip_range,
                             eps_rule=self.eps_rule)


class FusedDPMStep(nn.Module):
    """``(x_t, x0_last, t, t_prev, t_last) -> (x_prev, x0)``: the denoiser and the DPM-Solver++(2M) update.

    ``t_prev < 0`` means the last step, ``t_last < 0`` the first (``zoo.solvers.alpha_bars``): both
    make the update first order, as in ``dpmpp_2m_sample``.
    """

    def __init__(self, model: nn.Module, alphas_cumprod: np.ndarray, stochastic: bool = False, clip_range: float | None = 1.0,
                 eps_rule: str = DEFAULT_EPS_RULE):
        super().__init__()
        self.model = model
        self.register_buffer("alphas_cumprod", _alpha_table(alphas_cumprod))
        self.step = DPMStep(stochastic, clip_range, eps_rule)

    def forward(self, x_t, x0_last, t, t_prev, t_last):
        a_t, a_prev, a_last = alpha_bars(self.alphas_cumprod, t, t_prev, t_last)  # (B,) each
        eps = self.model(x_t, t)
        return self.step(x_t, eps, x0_last, a_t, a_prev, a_last)


class GuidedFusedStep(FusedStep):
    """``(x_t, t, t_prev, labels, guidance[, noise, eta]) -> x_prev``: a class-conditional model's fused DDIM step.

    The guided prediction (``zoo.diffusion.guided_eps``: one call on the 2B batch of the labels and
    the null class) replaces eps; everything else is ``FusedStep``.
    """

    def forward(self, x_t, t, t_prev, labels, guidance, noise=None, eta=None):
        a_t, a_prev, _ = alpha_bars(self.alphas_cumprod, t, t_prev)  # (B,) each
        eps = guided_eps(self.model, x_t, t, labels, self.model.null_class, guidance)
        return self.step(x_t, eps, a_t, a_prev, noise, eta)


class GuidedFusedDPMStep(FusedDPMStep):
    """``(x_t, x0_last, t, t_prev, t_last, labels, guidance) -> (x_prev, x0)``: the guided DPM-Solver++(2M) fused step."""

    def forward(self, x_t, x0_last, t, t_prev, t_last, labels, guidance):
        a_t, a_prev, a_last = alpha_bars(self.alphas_cumprod, t, t_prev, t_last)  # (B,) each
        eps = guided_eps(self.model, x_t, t, labels, self.model.null_class, guidance)
        return self.step(x_t, eps, x0_last, a_t, a_prev, a_last)


# Each solver's step module and fused-step modules, unconditional and guided (their forward
# signatures are the artifact table's inputs).
WRAPPERS: dict[str, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    "ddim": (DDIMStep, FusedStep, GuidedFusedStep),
    "dpmpp_2m": (DPMStep, FusedDPMStep, GuidedFusedDPMStep),
}


def reference(spec: ArtifactSpec, model: nn.Module, schedule: Schedule, clip_range: float | None,
              eps_rule: str = DEFAULT_EPS_RULE):
    """The eager torch callable an artifact must reproduce, by its kind and solver, with the bundle's x0 clamp and eps rule."""
    if spec.kind == "denoiser":
        return model
    guided = getattr(model, "null_class", None) is not None
    step, fused, guided_fused = WRAPPERS[spec.solver]
    if spec.kind == "step":
        return step(spec.stochastic, clip_range, eps_rule)
    if spec.kind == "fused_step":
        return (guided_fused if guided else fused)(model, schedule.alphas_cumprod, spec.stochastic, clip_range, eps_rule).eval()

    def sampler(x_T, timesteps, *rest):  # then [labels, guidance][, noise, eta]: the spec's inputs, in order
        extra = list(rest)
        labels, guidance = (extra.pop(0), extra.pop(0)) if guided else (None, None)
        noise, eta = (extra + [None, None])[:2]
        return sample(model, schedule, x_T, num_steps=len(timesteps), solver=spec.solver, spacing="leading",
                      eta=0.0 if eta is None else float(eta), noise=noise, clip_range=clip_range, eps_rule=eps_rule, labels=labels,
                      guidance=guidance)

    return sampler

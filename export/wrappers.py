"""The torch modules that are exported besides the denoiser: the solver steps and the fused steps.

They call ``zoo.diffusion.ddim_step`` / ``dpmpp_2m_step`` themselves, so every exported graph
computes exactly the math of the eager samplers; only the inputs differ. Noise and the solver's
state (the previous x0 prediction) are always inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoo.diffusion import ddim_step, dpmpp_2m_step

__all__ = ["DDIMStep", "FusedStep", "DPMStep", "FusedDPMStep"]


class DDIMStep(nn.Module):
    """``(x_t, eps, alpha_bar_t, alpha_bar_prev[, noise, eta]) -> x_prev``; alphas are per-sample (B,)."""

    def __init__(self, stochastic: bool, clip_range: float | None = 1.0) -> None:
        super().__init__()
        self.stochastic = stochastic
        self.clip_range = clip_range

    def forward(self, x_t, eps, alpha_bar_t, alpha_bar_prev, noise=None, eta=None):
        if self.stochastic:
            return ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta=eta, noise=noise, clip_range=self.clip_range)
        return ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, clip_range=self.clip_range)


class FusedStep(nn.Module):
    """``(x_t, t, t_prev[, noise, eta]) -> x_prev``: the denoiser and the DDIM update in one graph.

    The schedule's alpha-bar table is a constant of the graph, looked up by timestep; ``t_prev < 0``
    means alpha-bar_prev = 1 (the last step).
    """

    def __init__(self, model: nn.Module, alphas_cumprod: np.ndarray, stochastic: bool, clip_range: float | None = 1.0):
        super().__init__()
        self.model = model
        self.register_buffer("alphas_cumprod", _alpha_table(alphas_cumprod))
        self.step = DDIMStep(stochastic, clip_range)

    def forward(self, x_t, t, t_prev, noise=None, eta=None):
        a_t = self.alphas_cumprod[t]  # (B,)
        a_prev = torch.where(t_prev < 0, 1.0, self.alphas_cumprod[t_prev.clamp(min=0)])  # (B,)
        eps = self.model(x_t, t)
        return self.step(x_t, eps, a_t, a_prev, noise, eta)


def _alpha_table(alphas_cumprod: np.ndarray) -> torch.Tensor:
    """The float64 schedule cast once to float32, exactly as the eager samplers do."""
    return torch.from_numpy(np.array(alphas_cumprod, dtype=np.float64)).float()


class DPMStep(nn.Module):
    """``(x_t, eps, x0_last, alpha_bar_t, alpha_bar_prev, alpha_bar_last) -> (x_prev, x0)``: DPM-Solver++(2M)."""

    def __init__(self, clip_range: float | None = 1.0) -> None:
        super().__init__()
        self.clip_range = clip_range

    def forward(self, x_t, eps, x0_last, alpha_bar_t, alpha_bar_prev, alpha_bar_last):
        return dpmpp_2m_step(x_t, eps, x0_last, alpha_bar_t, alpha_bar_prev, alpha_bar_last, clip_range=self.clip_range)


class FusedDPMStep(nn.Module):
    """``(x_t, x0_last, t, t_prev, t_last) -> (x_prev, x0)``: the denoiser and the DPM-Solver++(2M) update.

    ``t_prev < 0`` means the last step (alpha-bar 1), ``t_last < 0`` the first (no earlier prediction,
    alpha-bar_last = 0): both make the update first order, as in ``dpmpp_2m_sample``.
    """

    def __init__(self, model: nn.Module, alphas_cumprod: np.ndarray, clip_range: float | None = 1.0):
        super().__init__()
        self.model = model
        self.register_buffer("alphas_cumprod", _alpha_table(alphas_cumprod))
        self.step = DPMStep(clip_range)

    def forward(self, x_t, x0_last, t, t_prev, t_last):
        a_t = self.alphas_cumprod[t]
        a_prev = torch.where(t_prev < 0, 1.0, self.alphas_cumprod[t_prev.clamp(min=0)])
        a_last = torch.where(t_last < 0, 0.0, self.alphas_cumprod[t_last.clamp(min=0)])
        eps = self.model(x_t, t)
        return self.step(x_t, eps, x0_last, a_t, a_prev, a_last)

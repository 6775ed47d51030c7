"""The torch modules that are exported besides the denoiser: the DDIM step and the fused step.

Both call ``zoo.diffusion.ddim_step`` itself, so every exported graph computes exactly the math of
the eager sampler (DDIM eq. 12, 16); only the inputs differ. Noise is always an input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zoo.diffusion import ddim_step

__all__ = ["DDIMStep", "FusedStep"]


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
        # Cast the float64 schedule once, exactly as ddim_sample does.
        self.register_buffer("alphas_cumprod", torch.from_numpy(np.array(alphas_cumprod, dtype=np.float64)).float())
        self.step = DDIMStep(stochastic, clip_range)

    def forward(self, x_t, t, t_prev, noise=None, eta=None):
        a_t = self.alphas_cumprod[t]  # (B,)
        a_prev = torch.where(t_prev < 0, 1.0, self.alphas_cumprod[t_prev.clamp(min=0)])  # (B,)
        eps = self.model(x_t, t)
        return self.step(x_t, eps, a_t, a_prev, noise, eta)

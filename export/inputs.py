"""Random but valid inputs for any artifact of the table (``export.format.artifacts``): what export verifies with."""

from __future__ import annotations

import numpy as np
import torch

from export.format.artifacts import ArtifactSpec
from zoo.solvers import alpha_bars

__all__ = ["make_inputs"]


def make_inputs(
    spec: ArtifactSpec, sizes: dict[str, int], alphas_cumprod: np.ndarray, generator: torch.Generator, eta: float = 0.7,
    num_classes: int = 0,
) -> dict[str, torch.Tensor]:
    """Random but valid inputs for ``spec`` at the given axis sizes (batch, height, width, steps).

    Timesteps are spread over [0, T) with ``t_prev = -1`` (the last step) for the last sample and
    ``t_last = -1`` (the first step) for the first; the alpha-bar inputs are the schedule's values
    at those timesteps. With a batch of 3 or more, every solver path is exercised. A whole loop's
    ``timesteps`` are a random descending grid, none of the spacings. For a class-conditional model
    (``num_classes``), labels and guidance values are mixed across the batch.
    """
    T = len(alphas_cumprod)
    ab = torch.from_numpy(np.array(alphas_cumprod, dtype=np.float64)).float()
    b = sizes["batch"]
    t = torch.randint(0, T, (b,), generator=generator)
    t_prev = t - torch.randint(1, max(2, T // 2), (b,), generator=generator)
    t_prev[-1] = -1
    t_prev = t_prev.clamp(min=-1)
    t_last = t + torch.randint(1, max(2, T // 2), (b,), generator=generator)
    t_last = torch.where(t_last > T - 1, -1, t_last)  # beyond the schedule: no earlier step, first order
    t_last[0] = -1
    a_t, a_prev, a_last = alpha_bars(ab, t, t_prev, t_last)
    values = {
        "t": t,
        "t_prev": t_prev,
        "alpha_bar_t": a_t,
        "alpha_bar_prev": a_prev,
        "t_last": t_last,
        "alpha_bar_last": a_last,
        "eta": torch.tensor(eta, dtype=torch.float32),
    }
    if num_classes:  # mixed labels (the denoiser also sees the null class) and mixed guidance, 0 to 4
        values["labels"] = torch.randint(0, num_classes + (spec.kind == "denoiser"), (b,), generator=generator)
        values["guidance"] = torch.rand(b, generator=generator) * 4
    if "steps" in sizes:  # a grid no spacing makes: a loop that visits any grid but the one it is fed fails its check
        values["timesteps"] = torch.randperm(T, generator=generator)[: sizes["steps"]].sort(descending=True).values
    out = {}
    for io in spec.inputs:
        if io.name in values:
            out[io.name] = values[io.name]
        else:
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in io.dims)
            out[io.name] = torch.randn(shape, generator=generator)
    return out

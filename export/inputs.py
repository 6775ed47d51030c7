"""Random but valid inputs for any artifact of the table (``export.format.artifacts``): what export verifies with."""

from __future__ import annotations

import numpy as np
import torch

from export.format.artifacts import ArtifactSpec
from zoo.conditioning import GUIDANCE_INPUT, Conditions
from zoo.diffusion import NO_STEP
from zoo.solvers import EARLIER, alpha_bars

__all__ = ["make_inputs"]


def make_inputs(
    spec: ArtifactSpec, sizes: dict[str, int], alphas_cumprod: np.ndarray, generator: torch.Generator, eta: float = 0.7,
    conditions: Conditions | None = None,
) -> dict[str, torch.Tensor]:
    """Random but valid inputs for ``spec`` at the given axis sizes (batch, height, width, steps).

    Each image is a step of its own random descending grid (``_grid_step``): the first image the
    first step of a grid (no earlier timestep: ``t_last = -1``), the last image the last step of a
    two-step grid (``t_prev = -1``, no ``t_last2``), the second (in a batch of 3 or more) a middle
    step with every earlier timestep and a next one, the others anywhere; the alpha-bar inputs are
    the schedule's values at those timesteps. With a batch of 3 or more, every solver path is
    exercised (each order of each multistep solver's predictor and corrector). A whole loop's
    ``timesteps`` are a random descending grid, none of the spacings. For a conditioned model
    (``conditions``), its inputs' values and the guidance are mixed across the batch: class labels of
    every class (the denoiser, which runs one branch per call, also sees the null class), tensors
    and their negatives drawn from a normal distribution, guidance w from 0 to 4.
    """
    T = len(alphas_cumprod)
    ab = torch.from_numpy(np.array(alphas_cumprod, dtype=np.float64)).float()
    b = sizes["batch"]
    n = 2 + len(EARLIER)  # a grid with a step that has a next one and every earlier one
    where = [(n, 0) if i == 0 else (2, 1) if i == b - 1 else (n, n - 2) if i == 1 else
             (int(torch.randint(1, n + 1, (), generator=generator)), int(torch.randint(0, n, (), generator=generator)))
             for i in range(b)]
    t, t_prev, *earlier = torch.tensor(list(zip(*(_grid_step(T, length, pos, generator) for length, pos in where))))
    a_t, a_prev, *a_earlier = alpha_bars(ab, t, t_prev, *earlier)
    values = {
        "t": t,
        "t_prev": t_prev,
        "alpha_bar_t": a_t,
        "alpha_bar_prev": a_prev,
        **{f"t_{w}": e for w, e in zip(EARLIER, earlier, strict=True)},
        **{f"alpha_bar_{w}": a for w, a in zip(EARLIER, a_earlier, strict=True)},
        "eta": torch.tensor(eta, dtype=torch.float32),
    }
    for c in conditions.inputs if conditions else ():
        if c.kind == "class":
            values[c.name] = torch.randint(0, c.null + (spec.kind == "denoiser"), (b,), generator=generator)
    if conditions:
        values[GUIDANCE_INPUT] = torch.rand(b, generator=generator) * 4
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


def _grid_step(T: int, length: int, pos: int, generator: torch.Generator) -> tuple[int, ...]:
    """``(t, t_prev, t_last, t_last2)`` of step ``pos`` of a random descending grid of ``length`` timesteps in [0, T)
    (each cut to what T allows); ``NO_STEP`` where the grid has no such step."""
    length = min(length, T)
    grid = torch.randperm(T, generator=generator)[:length].sort(descending=True).values.tolist() + [NO_STEP]
    pos = min(pos, length - 1)
    return grid[pos], grid[pos + 1], *(grid[pos - k] if pos >= k else NO_STEP for k in range(1, len(EARLIER) + 1))

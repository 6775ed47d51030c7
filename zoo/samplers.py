"""The eager reference samplers: ``zoo.solvers.solve`` around a torch model, the ground truth of every exported path.

Every solver declared in ``zoo.solvers`` (DDIM, DPM-Solver++(2M), Euler ancestral, UniPC);
the step math is ``zoo.diffusion``'s. Every noise tensor is an argument or drawn from a generator
the caller passes, so a run is reproducible.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.diffusion import (
    DEFAULT_EPS_RULE,
    DEFAULT_SPACING,
    Spacing,
    check_eps_rule,
    check_grid,
    ddim_timesteps,
)
from zoo.conditioning import GUIDANCE_INPUT, check_guidance, check_labels, guided_eps
from zoo.schedules import Schedule
from zoo.solvers import DEFAULT_SOLVER, SOLVER_TABLE, Solver, check_eta, get_solver, solve
from zoo.validate import check_real

__all__ = ["ddim_sample", "dpmpp_2m_sample", "sample"]


def _conditioning(model: Any, x_T: Any, labels: Any, guidance: Any) -> dict[str, Any] | None:
    """The guided network's feed (``zoo.conditioning.guided_eps``): the labels and guidance as (B,) tensors on x_T's
    device, checked against the model's declared conditioning; None to go without (the network alone).

    A class-conditional model samples its null class (unconditionally) when no labels are given.
    """
    conditions = getattr(model, "conditioning", None)
    classes = conditions and conditions.of_kind("class")
    if conditions is not None and conditions.inputs != (classes,):
        raise ValueError(f"the eager samplers condition on class labels; this model is conditioned on "
                         f"{[f'{i.name} ({i.kind})' for i in conditions.inputs]}: sample it with zoo.solvers.solve and "
                         "zoo.conditioning.guided_eps")
    if not classes:
        if labels is not None or guidance is not None:
            raise ValueError("labels and guidance need a class-conditional model (unet with num_classes=K); this one is "
                             "unconditional")
        return None
    b = x_T.shape[0]
    w = check_guidance(guidance, b, labels is not None)
    if labels is None:
        return None
    return {classes.name: torch.from_numpy(check_labels(labels, b, classes.null)).to(x_T.device),
            GUIDANCE_INPUT: torch.from_numpy(w).to(dtype=x_T.dtype, device=x_T.device)}


def _eager(solver: Solver, model: Any, schedule: Schedule, x_T: Any, num_steps: int, spacing: str, eta: float,
           noise: Any, progress: bool, clip_range: float | None, callback: Any, labels: Any = None,
           guidance: Any = None, eps_rule: str = DEFAULT_EPS_RULE, grid: Any = None) -> Any:
    """An eager torch sampler: checks, the float32 alpha-bar table on x_T's device, the model under inference mode.

    ``grid``: the timesteps to visit as given (``zoo.diffusion.check_grid``), in place of ``num_steps`` and ``spacing``.
    """
    from zoo.allocator import tune_allocator

    tune_allocator()  # no mmap/munmap per activation in a fresh process (zoo/allocator.py)
    check_eps_rule(eps_rule)
    T = schedule.num_train_timesteps
    model_T = getattr(getattr(model, "config", None), "num_train_timesteps", T)
    if model_T != T:
        raise ValueError(f"the model was built for num_train_timesteps={model_T} but the schedule has T={T}")
    timesteps = ddim_timesteps(T, num_steps, spacing) if grid is None else check_grid(grid, T)
    if x_T.ndim != 4:
        raise ValueError(f"x_T must have shape (B, C, H, W); got {tuple(x_T.shape)}")
    expected = (len(timesteps), *x_T.shape)
    if isinstance(noise, torch.Tensor) and tuple(noise.shape) != expected:
        raise ValueError(f"noise must have shape (S, B, C, H, W) = {expected}; got {tuple(noise.shape)}")
    if solver.stochastic(eta) and noise is None:
        why = "eta > 0" if solver.takes_eta else f"{solver.label} (it draws noise every step)"
        raise ValueError(f"{why} needs `noise`: a (S, B, C, H, W) tensor or a torch.Generator")
    # Cast the float64 schedule once, to the dtype every exported graph uses too.
    alphas = torch.from_numpy(schedule.alphas_cumprod.copy()).to(dtype=x_T.dtype, device=x_T.device)

    def draw(i: int) -> Any:
        if isinstance(noise, torch.Tensor):
            return noise[i]
        return torch.randn(x_T.shape, generator=noise, dtype=x_T.dtype, device=x_T.device)

    feed = _conditioning(model, x_T, labels, guidance)

    def denoise(x: Any, t: int) -> Any:
        tt = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        if feed is None:
            return model(x, tt)
        return guided_eps(model, x, tt, model.conditioning, feed)  # one call on the 2B batch

    with torch.inference_mode():
        return solve(solver, denoise, x_T, timesteps, alphas, eta=eta, noise=draw, clip_range=clip_range, eps_rule=eps_rule,
                     progress=progress, callback=callback)


def ddim_sample(
    model: torch.nn.Module,
    schedule: Schedule,
    x_T: torch.Tensor,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: Spacing = DEFAULT_SPACING,
    noise: torch.Tensor | torch.Generator | None = None,
    progress: bool = False,
    clip_range: float | None = 1.0,
    callback: Any = None,
    labels: Any = None,
    guidance: Any = None,
    eps_rule: str = DEFAULT_EPS_RULE,
) -> torch.Tensor:
    """The eager reference DDIM sampler: the ground truth every exported path is compared to.

    Args:
        model: an epsilon predictor ``model(x, t) -> eps``.
        schedule: the schedule the model was trained with.
        x_T: initial noise (B, C, H, W), a torch tensor.
        num_steps: number of denoising steps S, 1..T.
        eta: 0 (deterministic) .. 1.
        spacing: how the S timesteps are picked (see ``ddim_timesteps``).
        noise: for eta > 0, per-step noise (S, B, C, H, W) or a ``torch.Generator`` to draw it.
        progress: show a tqdm bar.
        clip_range: see ``ddim_step``.
        eps_rule: the eps the update remixes the clipped x0 with (``zoo.diffusion.EPS_RULES``):
            "clipped" (default, holds under guidance) or "model" (diffusers' DDIMScheduler default).
        callback: optional ``callback(i, t, eps, x_prev)`` after every step (for parity reports).
        labels: for a class-conditional model, the class of every image (one integer, or (B,));
            None samples the null class (unconditional).
        guidance: classifier-free guidance w (a number or (B,), default 1: conditional only),
            ``zoo.diffusion.guide``; each step calls the model once on a 2B batch.

    Returns:
        x_0 of shape (B, C, H, W), in [-clip_range, clip_range].

    Raises:
        NonFiniteSampleError: a step produced NaN or inf (named in the message); never returned.
    """
    eta = check_real("eta", eta, 0.0, 1.0, hint="0 = DDIM, 1 = DDPM-like")
    return _eager(SOLVER_TABLE["ddim"], model, schedule, x_T, num_steps, spacing, eta, noise, progress, clip_range, callback,
                  labels, guidance, eps_rule)


def dpmpp_2m_sample(
    model: torch.nn.Module,
    schedule: Schedule,
    x_T: torch.Tensor,
    num_steps: int = 20,
    spacing: Spacing = DEFAULT_SPACING,
    progress: bool = False,
    clip_range: float | None = 1.0,
    callback: Any = None,
    labels: Any = None,
    guidance: Any = None,
    eps_rule: str = DEFAULT_EPS_RULE,
) -> torch.Tensor:
    """The eager reference DPM-Solver++(2M) sampler; the contract of ``ddim_sample`` (deterministic: no eta).

    The solver's state between steps, the previous x0 prediction, is explicit: each step passes it
    to ``dpmpp_2m_step`` (``alpha_bar_last = 0`` on the first step).

    Raises:
        NonFiniteSampleError: a step produced NaN or inf (named in the message); never returned.
    """
    return _eager(SOLVER_TABLE["dpmpp_2m"], model, schedule, x_T, num_steps, spacing, 0.0, None, progress, clip_range, callback,
                  labels, guidance, eps_rule)


def sample(
    model: torch.nn.Module,
    schedule: Schedule,
    x_T: torch.Tensor,
    num_steps: int = 50,
    solver: str = DEFAULT_SOLVER,
    *,
    eta: float = 0.0,
    spacing: Spacing = DEFAULT_SPACING,
    noise: torch.Tensor | torch.Generator | None = None,
    progress: bool = False,
    clip_range: float | None = 1.0,
    callback: Any = None,
    labels: Any = None,
    guidance: Any = None,
    eps_rule: str = DEFAULT_EPS_RULE,
    timesteps: Any = None,
) -> torch.Tensor:
    """The eager sampler of ``solver`` (``zoo.solvers.SOLVERS``); a solver without eta refuses eta > 0, and one that draws
    noise every step (``euler_ancestral``) needs ``noise`` as DDIM at eta > 0 does.

    ``timesteps``: any grid of distinct, descending timesteps in 0..T-1 to visit as given, in place of
    ``num_steps`` and ``spacing`` (a grid another library uses; what the whole-loop graphs take).
    """
    entry = get_solver(solver)
    eta = check_eta(solver, eta)
    return _eager(entry, model, schedule, x_T, num_steps, spacing, eta, noise if entry.noise != "never" else None, progress,
                  clip_range, callback, labels, guidance, eps_rule, grid=timesteps)

"""The torch modules that are exported besides the denoiser (the solver steps and fused steps), and each artifact's reference.

Two modules serve every solver: ``SolverStep`` and ``FusedSolverStep`` take the artifact table's
inputs by name and call the solver row's step (``zoo.solvers``: the step functions of
``zoo.diffusion``), so every exported graph computes exactly the math of the eager samplers; only
the inputs differ. Noise and the solver's state are always inputs. ``reference`` computes the same
from the solver table, written apart from the modules (the whole loop by the host loop ``solve``),
so that verification compares two wirings (a crossed wire in a module fails its check).
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch
from torch import nn

from export.format.artifacts import ArtifactSpec
from zoo.conditioning import guided_eps
from zoo.diffusion import DEFAULT_EPS_RULE
from zoo.schedules import Schedule
from zoo.solvers import Solver, alpha_bars, get_solver, solve

__all__ = ["SolverStep", "FusedSolverStep", "wrapper", "check_signature", "reference"]


class _SolverModule(nn.Module):
    """What both solver modules share: the artifact's solver row, its input names, the x0 clamp and eps rule."""

    def __init__(self, spec: ArtifactSpec, clip_range: float | None = 1.0, eps_rule: str = DEFAULT_EPS_RULE) -> None:
        super().__init__()
        self.solver = get_solver(spec.solver)
        self.names = tuple(i.name for i in spec.inputs)
        self.rule = {"clip_range": clip_range, "eps_rule": eps_rule}

    def outputs(self, feed: dict, eps, alphas: tuple):
        """The update's outputs as the graph returns them: ``x_prev`` alone, or ``(x_prev, *state)``."""
        out = _update(self.solver, feed, eps, alphas, self.rule)
        return out if self.solver.state else out[0]


class SolverStep(_SolverModule):
    """One update of the artifact's solver: its inputs, taken by their names in the artifact table, -> ``x_prev`` (and
    the solver's state). The same module for every solver: the row (``zoo.solvers``) says what goes where."""

    def forward(self, *inputs: torch.Tensor):
        feed = dict(zip(self.names, inputs, strict=True))
        return self.outputs(feed, feed["eps"], tuple(feed[n] for n in self.solver.alpha_inputs))


class FusedSolverStep(_SolverModule):
    """The denoiser and its solver's update in one graph, inputs by name as ``SolverStep``'s, timesteps for alpha-bars.

    The schedule's alpha-bar table is a constant of the graph, looked up by timestep with the step
    rule of ``zoo.solvers.alpha_bars`` (``t_prev < 0``: the last step; ``t_last < 0``: the first).
    A conditioned model makes the guided prediction (``zoo.conditioning.guided_eps``: one call on
    the 2B batch of its conditioning and the unconditional branch) in place of eps.
    """

    def __init__(self, spec: ArtifactSpec, model: nn.Module, alphas_cumprod: np.ndarray, clip_range: float | None = 1.0,
                 eps_rule: str = DEFAULT_EPS_RULE):
        super().__init__(spec, clip_range, eps_rule)
        self.model = model
        self.register_buffer("alphas_cumprod", _alpha_table(alphas_cumprod))

    def forward(self, *inputs: torch.Tensor):
        feed = dict(zip(self.names, inputs, strict=True))
        eps = _eps(self.model, feed, feed["x_t"], feed["t"])
        return self.outputs(feed, eps, _alphas_at(self.solver, self.alphas_cumprod, feed))


def _eps(model: nn.Module, feed: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network's eps at (x, t): guided (one call on the 2B batch) for a model that declares its conditioning."""
    conditions = getattr(model, "conditioning", None)
    return model(x, t) if conditions is None else guided_eps(model, x, t, conditions, feed)


def _alphas_at(solver: Solver, table: torch.Tensor, feed: dict) -> tuple:
    """The alpha-bars of the feed's timesteps (``zoo.solvers.alpha_bars``), as many as the solver's step takes."""
    return alpha_bars(table, *(feed[n] for n in solver.timestep_inputs))[: len(solver.alpha_inputs)]


def _update(solver: Solver, feed: dict, eps, alphas: tuple, rule: dict) -> tuple:
    """``(x_prev, *state)`` of one step: x, the state and the noise taken from the feed by the row's names."""
    state = tuple(feed[i] for i, _ in solver.state)
    x, state = solver.update(feed["x_t"], eps, state, alphas[0], alphas[1], alphas[2:], eta=feed.get("eta", 0.0),
                             noise=feed.get("noise"), **rule)
    return (x, *state)


def _alpha_table(alphas_cumprod: np.ndarray) -> torch.Tensor:
    """The float64 schedule cast once to float32, exactly as the eager samplers do."""
    return torch.from_numpy(np.array(alphas_cumprod, dtype=np.float64)).float()


def wrapper(spec: ArtifactSpec, model: nn.Module, schedule: Schedule, clip_range: float | None,
            eps_rule: str = DEFAULT_EPS_RULE) -> nn.Module:
    """The torch module exported for an artifact: the denoiser (its inputs checked by name), a step or a fused step.

    Exporters bind the artifact table's inputs by position; the solver modules take them by the
    table's names, and the denoiser's ``forward`` must take them in the table's order (refused here
    otherwise, before anything is traced with its wires crossed). A whole-loop graph is built by
    ``export.loop`` around its fused step and has no module.
    """
    if spec.kind == "sampler":
        raise ValueError(f"{spec.name!r} is a whole-loop graph: export.loop builds it around {spec.body!r}")
    if spec.kind == "denoiser":
        return check_signature(model, spec)
    if spec.kind == "step":
        return SolverStep(spec, clip_range, eps_rule)
    return FusedSolverStep(spec, model, schedule.alphas_cumprod, clip_range, eps_rule).eval()


def check_signature(module: nn.Module, spec: ArtifactSpec) -> nn.Module:
    """``module`` if its ``forward`` takes ``spec``'s inputs by their names, in order; ``TypeError`` naming both otherwise."""
    params = inspect.signature(module.forward).parameters
    names, want = list(params), [i.name for i in spec.inputs]
    required_extra = [n for n in names[len(want):] if params[n].default is inspect.Parameter.empty]
    if names[: len(want)] != want or required_extra:
        raise TypeError(f"{type(module).__name__}.forward takes {names}, but the {spec.name!r} artifact's inputs are {want}: "
                        "the exporters bind them by position, so the names and their order must be the table's")
    return module


def reference(spec: ArtifactSpec, model: nn.Module, schedule: Schedule, clip_range: float | None,
              eps_rule: str = DEFAULT_EPS_RULE, dtype: torch.dtype = torch.float32) -> Callable[[dict], tuple]:
    """What an artifact must compute, ``feed -> outputs`` (in the table's order), written apart from the wrappers.

    Each input is taken from the feed by its name and goes where the solver table's step needs it
    (``zoo.solvers``), so a wrapper that crosses two wires disagrees with this and fails its
    verification; the whole loop visits exactly the ``timesteps`` it is fed. ``model`` and the
    alpha-bar table (the graphs' float32 values) run in ``dtype`` (float64: the bound's yardstick).
    """
    if spec.kind == "denoiser":
        return lambda feed: (model(*(feed[i.name] for i in spec.inputs)),)
    solver = get_solver(spec.solver)
    rule = {"clip_range": clip_range, "eps_rule": eps_rule}
    table = _alpha_table(schedule.alphas_cumprod).to(dtype)

    def step(feed: dict) -> tuple:
        return _update(solver, feed, feed["eps"], tuple(feed[n] for n in solver.alpha_inputs), rule)

    def fused_step(feed: dict) -> tuple:
        return _update(solver, feed, _eps(model, feed, feed["x_t"], feed["t"]), _alphas_at(solver, table, feed), rule)

    def sampler(feed: dict) -> tuple:
        x_T, noise = feed["x_T"], feed.get("noise")

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
            return _eps(model, feed, x, torch.full((x.shape[0],), t, dtype=torch.int64))

        eta = float(feed["eta"]) if "eta" in feed else 0.0
        return (solve(solver, denoise, x_T, feed["timesteps"].numpy(), table, eta=eta, check=False,
                      noise=None if noise is None else noise.__getitem__, **rule),)

    return {"step": step, "fused_step": fused_step, "sampler": sampler}[spec.kind]

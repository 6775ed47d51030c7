"""The torch modules that are exported besides the denoiser (the solver steps and fused steps), and each artifact's reference.

The wrappers call ``zoo.diffusion.ddim_step`` / ``dpmpp_2m_step`` themselves, so every exported
graph computes exactly the math of the eager samplers; only the inputs differ. Noise and the
solver's state (the previous x0 prediction) are always inputs. ``reference`` computes the same
from the solver table with every input taken by name, apart from the wrappers, so that
verification compares two independent wirings (a crossed wire in a wrapper fails its check).
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch
from torch import nn

from export.format.artifacts import ArtifactSpec
from zoo.diffusion import DEFAULT_EPS_RULE, ddim_step, dpmpp_2m_step, guided_eps
from zoo.schedules import Schedule
from zoo.solvers import alpha_bars, get_solver, solve

__all__ = ["DDIMStep", "FusedStep", "DPMStep", "FusedDPMStep", "GuidedFusedStep", "GuidedFusedDPMStep", "WRAPPERS",
           "wrapper", "check_signature", "reference"]


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


def wrapper(spec: ArtifactSpec, model: nn.Module, schedule: Schedule, clip_range: float | None,
            eps_rule: str = DEFAULT_EPS_RULE) -> nn.Module:
    """The torch module exported for an artifact (the denoiser, a step or a fused step), its inputs checked by name.

    Exporters bind the artifact table's inputs to ``forward`` by position, so ``forward``'s parameters
    must be the table's names in the table's order: a wrapper that takes them in another order is
    refused here, before anything is traced with its wires crossed. A whole-loop graph is built by
    ``export.loop`` around its fused step and has no module.
    """
    if spec.kind == "sampler":
        raise ValueError(f"{spec.name!r} is a whole-loop graph: export.loop builds it around {spec.body!r}")
    if spec.kind == "denoiser":
        return check_signature(model, spec)
    guided = getattr(model, "null_class", None) is not None
    step, fused, guided_fused = WRAPPERS[spec.solver]
    if spec.kind == "step":
        return check_signature(step(spec.stochastic, clip_range, eps_rule), spec)
    module = (guided_fused if guided else fused)(model, schedule.alphas_cumprod, spec.stochastic, clip_range, eps_rule)
    return check_signature(module.eval(), spec)


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
    guided = getattr(model, "null_class", None) is not None
    (state_in, _), = solver.state or ((None, None),)

    def eps_of(feed: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guided:
            return guided_eps(model, x, t, feed["labels"], model.null_class, feed["guidance"])
        return model(x, t)

    def update(feed: dict, x, eps, state, a_t, a_prev, a_last) -> tuple:
        x, state = solver.update(x, eps, state, a_t, a_prev, a_last, eta=feed.get("eta", 0.0), noise=feed.get("noise"), **rule)
        return (x, state) if solver.state else (x,)

    def step(feed: dict) -> tuple:
        return update(feed, feed["x_t"], feed["eps"], feed.get(state_in), feed["alpha_bar_t"], feed["alpha_bar_prev"],
                      feed.get("alpha_bar_last"))

    def fused_step(feed: dict) -> tuple:
        a_t, a_prev, a_last = alpha_bars(table, feed["t"], feed["t_prev"], feed.get("t_last"))
        x = feed["x_t"]
        return update(feed, x, eps_of(feed, x, feed["t"]), feed.get(state_in), a_t, a_prev, a_last)

    def sampler(feed: dict) -> tuple:
        x_T, noise = feed["x_T"], feed.get("noise")

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
            return eps_of(feed, x, torch.full((x.shape[0],), t, dtype=torch.int64))

        eta = float(feed["eta"]) if "eta" in feed else 0.0
        return (solve(solver, denoise, x_T, feed["timesteps"].numpy(), table, eta=eta, check=False,
                      noise=None if noise is None else noise.__getitem__, **rule),)

    return {"step": step, "fused_step": fused_step, "sampler": sampler}[spec.kind]

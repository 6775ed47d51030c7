"""The solver table: DDIM, DPM-Solver++(2M), Euler ancestral and UniPC declared once, the step rule, and the one host-side solver loop.

Each ``Solver`` names its step function (``zoo.diffusion``), the state it carries from one step to
the next, the earlier timesteps it reads, when it draws noise and its graphs' names; ``alpha_bars`` is the one place the step rule is written (the
alpha-bar after the last step is 1, before the first there is none: 0). The eager samplers, the
export wrappers and specs, the runtime modes and the bench and OpenVINO backends all read them;
``zoo.samplers`` runs ``solve`` around an eager torch model. Imports no torch: tensors bring their
own namespace (``zoo.diffusion._xp``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from zoo.diffusion import (
    DEFAULT_EPS_RULE,
    _is_torch,
    _xp,
    check_finite,
    ddim_step,
    dpmpp_2m_step,
    euler_ancestral_step,
    step_pairs,
    unipc_step,
)
from zoo.validate import check_real

__all__ = ["Solver", "NoiseKind", "EARLIER", "SOLVERS", "DEFAULT_SOLVER", "solver_help", "SOLVER_TABLE", "get_solver", "check_eta", "alpha_bars", "solve"]


# When a solver draws fresh noise every step: never (deterministic), when the caller's eta > 0 (DDIM: eta and the noise
# are graph inputs), or always (ancestral samplers: the noise is an input, its amount is the solver's own).
NoiseKind = Literal["never", "eta", "always"]

# The names of the earlier timesteps a multistep solver reads, in order: ``t_last`` / ``alpha_bar_last`` (the step
# before) and ``t_last2`` / ``alpha_bar_last2`` (the one before that) in its graphs.
EARLIER = ("last", "last2")


@dataclass(frozen=True)
class Solver:
    """One sampler of the reverse process, declared once: everything that exports, feeds or runs it reads this row.

    ``step`` is the pure step function of ``zoo.diffusion``, called as ``step(x_t, eps, *state,
    alpha_bar_t, alpha_bar_prev, *alpha_bar_earlier, [eta, noise,] clip_range=, eps_rule=)`` and
    returning ``x_prev`` alone, or ``(x_prev, *state)`` for a solver that carries state. ``state``
    names each carried tensor as its (graph input, graph output), every one zeros before the first
    step (DPM-Solver++(2M): its previous x0 prediction, ``x0_last`` in and ``x0`` out); ``earlier``
    counts the timesteps before ``t`` a step reads (``EARLIER``; -1 where there is none yet);
    ``noise`` says when a step draws noise (``NoiseKind``). ``artifacts`` names its step, fused-step
    and whole-loop graphs; a solver with ``noise="eta"`` has deterministic and stochastic variants,
    the latter named with ``_eta``.
    """

    name: str  # the name users pass: solver="ddim"
    label: str  # for messages and reports
    step: Callable[..., Any]
    diffusers: str  # the diffusers scheduler class that computes the same steps (the peer bench and the tests run it)
    artifacts: tuple[str, str, str]  # its (step, fused_step, sampler) artifacts' names
    noise: NoiseKind = "never"
    state: tuple[tuple[str, str], ...] = ()  # carried between steps besides x: (graph input, graph output) names
    earlier: int = 0  # earlier timesteps a step reads (at most len(EARLIER))
    note: str = ""  # one line for users (help texts)

    @property
    def takes_eta(self) -> bool:
        """Whether the caller chooses the amount of noise (eta, 0..1)."""
        return self.noise == "eta"

    def stochastic(self, eta: float) -> bool:
        """Whether a run at ``eta`` draws noise every step (needs a noise input): the one definition everyone reads."""
        return self.noise == "always" or (self.noise == "eta" and eta > 0)

    @property
    def variants(self) -> tuple[bool, ...]:
        """The stochastic values its graphs come in (an eta solver: both; otherwise its one)."""
        return {"never": (False,), "eta": (False, True), "always": (True,)}[self.noise]

    def artifact(self, kind: str, stochastic: bool) -> str:
        """The name of its artifact of ``kind`` ("step", "fused_step" or "sampler") in that variant."""
        name = self.artifacts[("step", "fused_step", "sampler").index(kind)]
        return f"{name}_eta" if stochastic and self.noise == "eta" else name

    @property
    def timestep_inputs(self) -> tuple[str, ...]:
        """Its fused step's timestep inputs: ``t``, ``t_prev`` and the earlier ones (``t_last``)."""
        return ("t", "t_prev", *(f"t_{w}" for w in EARLIER[: self.earlier]))

    @property
    def alpha_inputs(self) -> tuple[str, ...]:
        """Its step's alpha-bar inputs, one per timestep input: ``alpha_bar_t``, ``alpha_bar_prev``, ``alpha_bar_last``."""
        return tuple(f"alpha_bar_{'t' if n == 't' else n.removeprefix('t_')}" for n in self.timestep_inputs)

    def noise_inputs(self, stochastic: bool) -> tuple[str, ...]:
        """The inputs a step graph of that variant takes for its noise: ("noise", "eta"), ("noise",) or none."""
        return () if not stochastic else ("noise", "eta") if self.noise == "eta" else ("noise",)

    def update(self, x: Any, eps: Any, state: tuple, a_t: Any, a_prev: Any, a_earlier: tuple = (), *, eta: Any = 0.0,
               noise: Any = None, clip_range: float | None = 1.0, eps_rule: str = DEFAULT_EPS_RULE) -> tuple[Any, tuple]:
        """One step: ``(x_prev, state')``, the state a tuple in ``self.state``'s order (empty for none)."""
        given = {"eta": eta, "noise": noise}
        kw = {"clip_range": clip_range, "eps_rule": eps_rule, **{n: given[n] for n in self.noise_inputs(self.noise != "never")}}
        out = self.step(x, eps, *state, a_t, a_prev, *a_earlier[: self.earlier], **kw)
        return (out[0], tuple(out[1:])) if self.state else (out, ())


SOLVER_TABLE: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("ddim", "DDIM", ddim_step, "DDIMScheduler", ("ddim_step", "fused_step", "sampler"), noise="eta",
               note="any eta: 0 deterministic, 1 DDPM-like"),
        Solver("dpmpp_2m", "DPM-Solver++(2M)", dpmpp_2m_step, "DPMSolverMultistepScheduler",
               ("dpmpp_step", "fused_step_dpmpp", "sampler_dpmpp"), state=(("x0_last", "x0"),), earlier=1,
               note="deterministic, ~3x fewer steps than DDIM for the same quality"),
        Solver("euler_ancestral", "Euler ancestral", euler_ancestral_step, "EulerAncestralDiscreteScheduler",
               ("euler_ancestral_step", "fused_step_euler_ancestral", "sampler_euler_ancestral"), noise="always",
               note="fresh noise on every step: DDIM at eta 1 in the Euler form"),
        Solver("unipc", "UniPC", unipc_step, "UniPCMultistepScheduler", ("unipc_step", "fused_step_unipc", "sampler_unipc"),
               state=(("x_last", "x_corrected"), ("x0_last", "x0"), ("x0_last2", "x0_last_out")), earlier=2,
               note="deterministic, predictor-corrector (bh2, order 2): DPM-Solver++'s step, corrected"),
    )
}
SOLVERS = tuple(SOLVER_TABLE)  # ("ddim", "dpmpp_2m", "euler_ancestral", "unipc")
DEFAULT_SOLVER = "ddim"  # every sampler's and request's default
assert all(s.earlier <= len(EARLIER) for s in SOLVER_TABLE.values()), "name the extra earlier timesteps in EARLIER"


def solver_help() -> str:
    """The solvers for a help text, each with its note: "ddim (any eta ...), dpmpp_2m (...), ..."."""
    return ", ".join(f"{s.name} ({s.note})" for s in SOLVER_TABLE.values())


def get_solver(name: str) -> Solver:
    """The table entry of ``name``; ``ValueError`` listing the solvers otherwise."""
    if name not in SOLVER_TABLE:
        raise ValueError(f"unknown solver {name!r}: expected one of {list(SOLVERS)}")
    return SOLVER_TABLE[name]


def check_eta(solver: str, eta: float) -> float:
    """``eta`` as a float if ``solver`` accepts it (0..1, and 0 for a deterministic solver); ``ValueError`` naming it."""
    entry = get_solver(solver)
    eta = check_real("eta", eta, 0.0, 1.0, hint="0 = DDIM, 1 = DDPM-like")
    if eta != 0 and not entry.takes_eta:
        takes = [name for name, s in SOLVER_TABLE.items() if s.takes_eta]
        what = "is deterministic" if entry.noise == "never" else "sets its own noise on every step"
        raise ValueError(f"eta={eta!r} is invalid with solver {solver!r}, which {what}: use eta=0, or solver "
                         f"{' or '.join(repr(t) for t in takes)}")
    return eta


def alpha_bars(table: Any, t: Any, t_prev: Any, *t_earlier: Any) -> tuple[Any, ...]:
    """alpha-bar at ``t``, ``t_prev`` and each earlier timestep (``t_last``, ...) from a schedule's alpha-bar ``table``:
    the step rule.

    ``t_prev < 0`` (``zoo.diffusion.NO_STEP``) is the step after the last (alpha-bar 1: the clean
    image), an earlier timestep ``< 0`` a step before the first (alpha-bar 0: no earlier prediction).
    Timesteps are Python/numpy integers (one step of a host loop) or per-sample (B,) int64 arrays or
    tensors (inside a traced graph). Returns ``(a_t, a_prev, *a_earlier)``.
    """
    if isinstance(t_prev, numbers.Integral):  # NO_STEP is negative, every real timestep >= 0
        return table[t], table[t_prev] if t_prev >= 0 else 1.0, *(table[e] if e >= 0 else 0.0 for e in t_earlier)
    xp = _xp(t_prev)

    def at(ts: Any) -> Any:
        return table[ts.clamp(min=0)] if _is_torch(ts) else table[np.maximum(ts, 0)]

    return table[t], xp.where(t_prev < 0, 1.0, at(t_prev)), *(xp.where(e < 0, 0.0, at(e)) for e in t_earlier)


def solve(
    solver: Solver | str,
    denoise: Callable[[Any, int], Any],
    x_T: Any,
    timesteps: np.ndarray,
    alphas: Any,
    *,
    eta: float = 0.0,
    noise: Callable[[int], Any] | None = None,
    clip_range: float | None = 1.0,
    eps_rule: str = DEFAULT_EPS_RULE,
    update: Callable[..., tuple[Any, Any]] | None = None,
    progress: bool = False,
    callback: Callable[[int, int, Any, Any], None] | None = None,
    check: bool = True,
) -> Any:
    """The one host-side solver loop, torch or numpy: ``denoise(x, t)`` then the solver's update at every timestep.

    Args:
        denoise: ``(x, t: int) -> eps``; a model, a TorchScript graph or an onnxruntime session.
        alphas: the alpha-bar table in x's array type and dtype.
        noise: ``noise(i) -> z`` for step i when eta > 0.
        clip_range, eps_rule: the x0 clamp and the eps rule of every step (``zoo.diffusion.ddim_step``).
        update: replaces the solver's own update (a traced step graph with the same arguments).
        callback: ``callback(i, t, eps, x_prev)`` after every step.
        check: raise ``NonFiniteSampleError`` naming the step if x becomes NaN or inf.
    """
    solver = get_solver(solver) if isinstance(solver, str) else solver
    update = update or solver.update
    t_prevs, *t_earlier = step_pairs(timesteps, solver.earlier)
    state = tuple(_xp(x_T).zeros_like(x_T) for _ in solver.state)
    steps: Any = range(len(timesteps))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=solver.name, unit="step")
    x = x_T
    for i in steps:
        t = int(timesteps[i])
        eps = denoise(x, t)
        a_t, a_prev, *a_earlier = alpha_bars(alphas, t, int(t_prevs[i]), *(int(e[i]) for e in t_earlier))
        z = noise(i) if solver.stochastic(eta) and noise is not None else None
        x, state = update(x, eps, state, a_t, a_prev, tuple(a_earlier), eta=eta, noise=z, clip_range=clip_range,
                          eps_rule=eps_rule)
        if check:
            check_finite(x, f"{solver.name}_sample step {i} (t={t})")
        if callback is not None:
            callback(i, t, eps, x)
    return x

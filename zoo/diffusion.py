"""DDPM/DDIM/DPM-Solver++/Euler ancestral/UniPC math as pure functions: the forward process, the timesteps, one solver step.

Forward process from Ho et al. 2020 (DDPM, eq. 4); reverse update from Song et al. 2021
(DDIM, eq. 12 and 16); the multistep solver DPM-Solver++(2M) from Lu et al. 2022 (Algorithm 2,
data-prediction form, as diffusers' ``DPMSolverMultistepScheduler`` with ``solver_order=2``);
its predictor-corrector UniPC from Zhao et al. 2023 (bh2, order 2, as ``UniPCMultistepScheduler``).
No hidden state and no hidden randomness: every noise tensor and the solver's previous x0
prediction are arguments, so a sampling run is reproducible and exportable to a graph.

Notation (one table for the whole module):
    code              paper
    alpha_bar_t       alpha-bar_t  (``Schedule.alphas_cumprod[t]``)
    alpha_bar_prev    alpha-bar_{t-1}, the next timestep in the sampling list (1.0 after the last)
    eps               epsilon_theta(x_t, t), the model's noise prediction
    x0                predicted x_0, "clipped denoised" to [-clip_range, clip_range]
    eps_rule          which eps the update remixes x0 with: the network's ("model") or the one
                      re-derived from the clipped x0 ("clipped"); ``EPS_RULES``
    sigma             sigma_t(eta), DDIM eq. 16
    noise             z ~ N(0, I), always supplied by the caller
    w                 the guidance scale of classifier-free guidance (``guide``)
    x0_last           DPM-Solver++(2M), UniPC: the x0 predicted at the previous step's timestep
    alpha_bar_last    alpha-bar at that timestep (0 on the first step: there is none)
    x0_last2          UniPC: the x0 of the step before that; alpha_bar_last2 its alpha-bar
    x_last            UniPC: the corrected sample the previous step's predictor started from
    lambda            log(alpha_t / sigma_t) = 0.5 log(alpha_bar / (1 - alpha_bar)), the log-SNR

``ddim_step``, ``dpmpp_2m_step``, ``euler_ancestral_step``, ``unipc_step`` and ``make_training_sample`` are written once
with arithmetic operators, ``.clip`` and the functions numpy and torch share by name (``log``, ``expm1``, ``where``), so the
same definition serves torch tensors (eager, traced for export) and numpy arrays (the torch-free
runtime). The solver table and the eager reference samplers built on these steps are in
``zoo.solvers``. This module imports no torch.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
from typing import Any, Literal, get_args

import numpy as np

from zoo.schedules import (
    SCHEDULES,
    Schedule,
    cosine_schedule,
    linear_schedule,
    make_schedule,
)
from zoo.validate import check_int, check_real

__all__ = [
    "Schedule",
    "linear_schedule",
    "cosine_schedule",
    "make_schedule",
    "SCHEDULES",
    "SPACINGS",
    "Spacing",
    "DEFAULT_SPACING",
    "ddim_timesteps",
    "check_grid",
    "make_training_sample",
    "guide",
    "ddim_step",
    "dpmpp_2m_step",
    "euler_ancestral_step",
    "unipc_step",
    "predict_x0",
    "EPS_RULES",
    "EpsRule",
    "DEFAULT_EPS_RULE",
    "check_eps_rule",
    "step_pairs",
    "NO_STEP",
    "NonFiniteSampleError",
    "check_finite",
]

log = logging.getLogger(__name__)

Spacing = Literal["leading", "trailing", "linspace"]
DEFAULT_SPACING: Spacing = "leading"  # diffusers' DDIMScheduler default: every sampler's and request's default
EpsRule = Literal["clipped", "model"]

# Which eps a step remixes the clipped x0 with, declared once: each rule with why one would choose it.
EPS_RULES: dict[str, str] = {
    "clipped": "eps re-derived from the clipped x0 (improved-diffusion's DDIM with clip_denoised, GLIDE; diffusers' "
               "use_clipped_model_output=True): x0 and eps stay consistent, so guidance cannot push the "
               "deterministic update out of the data's range (diffzoo's own models)",
    "model": "the network's eps as predicted (diffusers' DDIMScheduler default, use_clipped_model_output=False): "
             "what diffusers' pipelines compute (diffusers folders)",
}
DEFAULT_EPS_RULE: EpsRule = "clipped"


def check_eps_rule(eps_rule: Any) -> str:
    """``eps_rule`` if it is one of ``EPS_RULES``; ``ValueError`` listing them otherwise."""
    if not isinstance(eps_rule, str) or eps_rule not in EPS_RULES:
        raise ValueError(f"unknown eps_rule {eps_rule!r}: expected one of {sorted(EPS_RULES)}")
    return eps_rule


class NonFiniteSampleError(ArithmeticError):
    """A sampler produced NaN or inf: the model diverged. Never returned silently."""


def check_finite(x: Any, where: str) -> None:
    """Raise ``NonFiniteSampleError`` naming ``where`` if x (torch or numpy) holds NaN or inf."""
    finite = x.isfinite().all() if _is_torch(x) else np.isfinite(x).all()
    if not bool(finite):
        bad = int((~x.isfinite()).sum()) if _is_torch(x) else int((~np.isfinite(x)).sum())
        raise NonFiniteSampleError(
            f"{where}: {bad} non-finite values (NaN or inf): the model's predictions diverged "
            "(see docs/QUALITY.md, 'Non-finite samples'); try fewer steps, trailing spacing or a better-trained model"
        )


def _round_half_even(num: np.ndarray, den: int) -> np.ndarray:
    """``round(num / den)`` in exact integer arithmetic, ties to even as ``np.round`` does."""
    q, r = np.divmod(num, den)
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up


def _leading(T: int, S: int) -> np.ndarray:
    return (np.arange(S, dtype=np.int64) * (T // S))[::-1]


def _trailing(T: int, S: int) -> np.ndarray:
    # round(T k / S) - 1 for k = S..1. diffusers builds this with np.arange and a float step, which
    # for 62 of the 1000 step counts at T = 1000 (61, 103, ...) yields S + 1 values ending in -1.
    k = np.arange(S, 0, -1, dtype=np.int64)
    return _round_half_even(T * k, S) - 1


def _linspace(T: int, S: int) -> np.ndarray:
    if S == 1:
        return np.zeros(1, dtype=np.int64)  # np.linspace(0, T - 1, 1) == [0]
    i = np.arange(S - 1, -1, -1, dtype=np.int64)
    return _round_half_even((T - 1) * i, S - 1)


# Conventions of the widely used DDIM implementations (diffusers' ``timestep_spacing``), computed in
# integers: every spacing gives exactly S distinct, descending timesteps in 0..T-1 for every S in 1..T.
SPACINGS = dict(zip(get_args(Spacing), (_leading, _trailing, _linspace), strict=True))  # the names written once, in the type


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: Spacing = DEFAULT_SPACING) -> np.ndarray:
    """The descending int64 timesteps a DDIM sampler visits, shape (num_steps,)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}: expected one of {sorted(SPACINGS)}")
    num_steps = check_int("num_steps", num_steps, 1, num_train_timesteps)
    return np.array(SPACINGS[spacing](int(num_train_timesteps), num_steps), dtype=np.int64)  # a copy: never a reversed view


def check_grid(timesteps: Any, num_train_timesteps: int) -> np.ndarray:
    """A sampling grid as int64: S >= 1 distinct, descending integers in 0..T-1; ``ValueError`` naming it otherwise.

    Any such list is a valid grid (``ddim_timesteps`` gives the usual ones); the eager sampler, the
    runtime and the whole-loop graphs all take it as it is.
    """
    ts = np.asarray(timesteps)
    T = int(num_train_timesteps)
    if (ts.ndim != 1 or not np.issubdtype(ts.dtype, np.integer) or len(ts) == 0 or ts.min() < 0 or ts.max() >= T
            or np.any(np.diff(ts) >= 0)):
        raise ValueError(f"timesteps={ts.tolist()[:8]}{'...' if ts.size > 8 else ''} are invalid: expected distinct, "
                         f"descending integers in 0..{T - 1} (ddim_timesteps gives them)")
    return ts.astype(np.int64)


# The timestep of a step that does not exist: after the last (alpha-bar 1) or before the first (alpha-bar 0);
# zoo.solvers.alpha_bars reads it, the whole-loop graph (export.loop) feeds it.
NO_STEP = -1


def step_pairs(timesteps: np.ndarray, earlier: int = 1) -> tuple[np.ndarray, ...]:
    """``(t_prev, t_last, t_last2, ...)`` for each step of a descending timestep list, as int64 arrays.

    ``t_prev[i]`` is the timestep step i goes to (-1 after the last: alpha-bar 1, the clean image);
    ``t_last[i]`` the one step i-1 started from, ``t_last2[i]`` step i-2's, and so on for ``earlier``
    lists (-1 where there is no such step: no earlier prediction).
    """
    ts = np.asarray(timesteps, dtype=np.int64)
    none = np.array([NO_STEP], dtype=np.int64)
    return (np.concatenate([ts[1:], none]),
            *(np.concatenate([np.repeat(none, k), ts])[: len(ts)] for k in range(1, earlier + 1)))


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _xp(x: Any) -> Any:
    """The array namespace of x: ``torch`` or ``numpy`` (both spell log and where the same).

    A torch tensor means torch is loaded already: it is taken from ``sys.modules``, never imported
    here, so this module stays importable (and imported) without torch.
    """
    return sys.modules["torch"] if _is_torch(x) else np


def _coef(a: Any, x: Any) -> Any:
    """A scalar or per-sample (B,) coefficient as x's array type and dtype, broadcastable over x."""
    if _is_torch(x):
        a = _xp(x).as_tensor(a, dtype=x.dtype, device=x.device)
    else:
        a = np.asarray(a, dtype=x.dtype)
    if a.ndim == 1:
        a = a.reshape((-1,) + (1,) * (x.ndim - 1))  # (B, 1, 1, 1)
    return a


def _check_float(name: str, x: Any) -> None:
    """Refuse an integer or boolean array: the solver arithmetic would cast alpha-bar to it (0) and return NaN."""
    floating = x.dtype.is_floating_point if _is_torch(x) else np.issubdtype(np.asarray(x).dtype, np.floating)
    if not floating:
        raise TypeError(f"{name} has dtype {x.dtype}: expected a floating-point array or tensor (convert it, "
                        "e.g. x.astype(np.float32) or x.float(), scaling images to [-1, 1] first)")


def _check_alpha(name: str, a: Any, low: float, high: float, closed: str) -> None:
    """Refuse a non-finite or out-of-range alpha-bar given as a number or numpy array (tensors are traced graphs' inputs)."""
    if _is_torch(a):
        return
    v = np.asarray(a, dtype=np.float64)
    lo_ok = v >= low if "[" in closed else v > low
    hi_ok = v <= high if "]" in closed else v < high
    if not (np.isfinite(v).all() and lo_ok.all() and hi_ok.all()):
        raise ValueError(f"{name}={a!r} is invalid: expected finite values in {closed[0]}{low:g}, {high:g}{closed[1]}")


def _check_step_inputs(arrays: dict[str, Any], alpha_bar_t: Any, alpha_bar_prev: Any, **earlier: Any) -> None:
    """A step's checks, one rule for every solver: its arrays are floating point, alpha-bar_t in (0, 1), alpha-bar_prev
    in (0, 1] (1: the last step) and each earlier alpha-bar in [0, 1) (0: no such step)."""
    for name, v in arrays.items():
        _check_float(name, v)
    _check_alpha("alpha_bar_t", alpha_bar_t, 0.0, 1.0, "()")
    _check_alpha("alpha_bar_prev", alpha_bar_prev, 0.0, 1.0, "(]")
    for name, a in earlier.items():
        _check_alpha(name, a, 0.0, 1.0, "[)")


def guide(eps_cond: Any, eps_uncond: Any, guidance: Any) -> Any:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ``eps_uncond + w (eps_cond - eps_uncond)``.

    ``guidance`` w is a number or per sample (B,): 1 is the conditional prediction, 0 the
    unconditional one, w > 1 pushes towards the class. torch or numpy, like the steps.
    """
    w = _coef(guidance, eps_cond)
    return eps_uncond + w * (eps_cond - eps_uncond)


def make_training_sample(x0: Any, eps: Any, alpha_bar_t: Any) -> tuple[Any, Any]:
    """Noise clean data to timestep t (DDPM eq. 4): ``x_t = sqrt(a)*x0 + sqrt(1-a)*eps``.

    Args:
        x0: clean data (B, C, H, W), torch or numpy.
        eps: the noise to add, same shape; drawn by the caller.
        alpha_bar_t: alpha-bar_t, a scalar or per-sample (B,).

    Returns:
        ``(x_t, target)`` where the epsilon-prediction target is ``eps`` itself.
    """
    if tuple(x0.shape) != tuple(eps.shape):
        raise ValueError(f"x0 has shape {tuple(x0.shape)} but eps has shape {tuple(eps.shape)}: they must match")
    _check_float("x0", x0)
    _check_float("eps", eps)
    a = _coef(alpha_bar_t, x0)
    return a**0.5 * x0 + (1 - a) ** 0.5 * eps, eps


def predict_x0(x_t: Any, eps: Any, a_t: Any, clip_range: float | None, eps_rule: str = DEFAULT_EPS_RULE) -> tuple[Any, Any]:
    """``(x0, eps)`` of a step: the predicted x0 (DDIM eq. 12), clamped to ``clip_range``, and the eps of ``eps_rule``.

    ``a_t`` is alpha-bar_t already broadcastable over x_t (``_coef``). With ``eps_rule="clipped"``
    the eps returned is the one the clipped x0 implies, ``(x_t - sqrt(a_t) x0) / sqrt(1 - a_t)``; with
    "model" (or no clip) it is the network's own.
    """
    x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    if clip_range is None:
        return x0, eps
    x0 = x0.clip(-clip_range, clip_range)
    if eps_rule == "clipped":
        eps = (x_t - a_t**0.5 * x0) / (1 - a_t) ** 0.5
    return x0, eps


def _check_step_options(clip_range: float | None, eps_rule: str) -> None:
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range={clip_range!r} is invalid: expected a positive number or None")
    check_eps_rule(eps_rule)


def ddim_step(
    x_t: Any,
    eps: Any,
    alpha_bar_t: Any,
    alpha_bar_prev: Any,
    eta: Any = 0.0,
    noise: Any = None,
    clip_range: float | None = 1.0,
    eps_rule: str = DEFAULT_EPS_RULE,
) -> Any:
    """One reverse DDIM update x_t -> x_{t_prev} (DDIM eq. 12).

    Args:
        x_t: current sample (B, C, H, W), torch or numpy.
        eps: predicted noise, same shape.
        alpha_bar_t, alpha_bar_prev: scalars or per-sample (B,); ``alpha_bar_prev=1`` on the last step.
        eta: 0 for deterministic DDIM, 1 for DDPM-like ancestral noise (a number or a 0-d tensor).
        noise: N(0, I) noise of x_t's shape; required when eta > 0.
        clip_range: clamp of the predicted x0 ("clipped denoised"); None disables it.
        eps_rule: the eps the direction term uses (``EPS_RULES``): "clipped" re-derives it from the
            clipped x0, "model" keeps the network's (diffusers' default); the same without a clip.

    Returns:
        x_prev, same shape and type as x_t.
    """
    if isinstance(eta, numbers.Real):  # a 0-d tensor (a traced input) is checked by the caller
        eta = check_real("eta", eta, 0.0, 1.0, hint="0 = DDIM, 1 = DDPM-like")
        if eta > 0 and noise is None:
            raise ValueError(f"eta={eta!r} > 0 needs `noise` of shape {tuple(x_t.shape)}; none was given")
    _check_step_options(clip_range, eps_rule)
    _check_step_inputs({"x_t": x_t, "eps": eps}, alpha_bar_t, alpha_bar_prev)
    a_t = _coef(alpha_bar_t, x_t)
    a_prev = _coef(alpha_bar_prev, x_t)
    eta = _coef(eta, x_t)

    x0, eps = predict_x0(x_t, eps, a_t, clip_range, eps_rule)  # DDIM eq. 12, "predicted x0"
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5  # eq. 16
    # 1 - a_prev - sigma^2 >= 0 for eta <= 1; the clip only absorbs float rounding.
    direction = (1 - a_prev - sigma**2).clip(0, None) ** 0.5 * eps
    x_prev = a_prev**0.5 * x0 + direction
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def dpmpp_2m_step(
    x_t: Any,
    eps: Any,
    x0_last: Any,
    alpha_bar_t: Any,
    alpha_bar_prev: Any,
    alpha_bar_last: Any,
    clip_range: float | None = 1.0,
    eps_rule: str = DEFAULT_EPS_RULE,
) -> tuple[Any, Any]:
    """One DPM-Solver++(2M) update x_t -> x_{t_prev} (Lu et al. 2022, Algorithm 2, midpoint form).

    With ``lambda = log(alpha / sigma)``, ``h = lambda_prev - lambda_t`` and ``h_last = lambda_t -
    lambda_last``, the update is ``x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (e^-h - 1) D``,
    ``D = x0 + (h / h_last) (x0 - x0_last) / 2``: first order (the DDIM update with eps recomputed
    from the clipped x0) where there is no earlier prediction (``alpha_bar_last = 0``, the first
    step) or no noise left to remove (``alpha_bar_prev = 1``, the last step), as the reference does.

    Args:
        x_t: current sample (B, C, H, W), torch or numpy.
        eps: predicted noise at (x_t, t), same shape.
        x0_last: the x0 this solver predicted at the previous step (any values on the first step).
        alpha_bar_t, alpha_bar_prev, alpha_bar_last: scalars or per-sample (B,); ``alpha_bar_prev = 1``
            on the last step, ``alpha_bar_last = 0`` on the first.
        clip_range: clamp of the predicted x0; None disables it.
        eps_rule: accepted for the solver table's one calling convention; the update is written in
            x0 alone (data prediction), which is the "clipped" rule whatever this says.

    Returns:
        ``(x_prev, x0)``: the next sample and this step's x0 prediction (the next step's ``x0_last``).
    """
    _check_step_options(clip_range, eps_rule)
    _check_step_inputs({"x_t": x_t, "eps": eps, "x0_last": x0_last}, alpha_bar_t, alpha_bar_prev, alpha_bar_last=alpha_bar_last)
    a_t, a_prev, a_last = _coef(alpha_bar_t, x_t), _coef(alpha_bar_prev, x_t), _coef(alpha_bar_last, x_t)
    x0, _ = predict_x0(x_t, eps, a_t, clip_range, eps_rule)
    return _multistep_update(x_t, x0, x0_last, a_t, a_prev, a_last), x0


def _log_snr(a: Any) -> Any:
    """lambda = log(alpha / sigma) = 0.5 log(alpha_bar / (1 - alpha_bar))."""
    xp = _xp(a)
    return 0.5 * (xp.log(a) - xp.log(1 - a))


def _multistep_update(x: Any, x0: Any, x0_last: Any, a_t: Any, a_prev: Any, a_last: Any) -> Any:
    """The second-order multistep update from ``x`` at ``a_t`` to ``a_prev`` of the x0 predictions at ``a_t`` and
    ``a_last``: DPM-Solver++(2M)'s step, and UniPC's predictor (UniP-2 with B(h) = e^h - 1 is the same update).

    ``x_prev = (sigma_prev / sigma_t) x - alpha_prev (e^-h - 1) D``, ``D = x0 + (h / h_last) (x0 - x0_last) / 2``;
    first order where there is no earlier prediction (``a_last = 0``) or no noise left (``a_prev = 1``).
    """
    xp = _xp(x)
    ratio = (1 - a_prev) ** 0.5 / (1 - a_t) ** 0.5  # sigma_prev / sigma_t
    # Second order only where both neighbours exist; elsewhere the logs are taken of stand-ins
    # (a_t itself) so that no inf or NaN is ever formed, then the correction is zeroed.
    second = (a_last > 0) & (a_prev < 1)
    lam_t = _log_snr(a_t)
    h = _log_snr(xp.where(second, a_prev, a_t * 0.5)) - lam_t
    h_last = lam_t - _log_snr(xp.where(second, a_last, a_t * 0.5))
    r = xp.where(second, h / h_last, 0 * h)
    d = x0 + 0.5 * r * (x0 - x0_last)
    return ratio * x + (a_prev**0.5 - ratio * a_t**0.5) * d  # -alpha_prev (e^-h - 1) = alpha_prev - ratio alpha_t


def _phi(z: Any, k: int) -> Any:
    """phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k, k = 2 or 3 (UniPC's B(h) coefficients), accurate for every z.

    The closed form cancels catastrophically for small |z| (its float32 error grows as 1e-7 / |z|^k:
    noise at |z| ~ 0.01, a step of a 1,000-step grid), so there it is the power series
    sum_j z^j / (j + k)! (12 terms: truncated below 1e-12 for |z| < 1).
    """
    xp = _xp(z)
    small = xp.abs(z) < 1
    zc = xp.where(small, z * 0 + 1, z)  # a stand-in where the series is taken: no division by ~0
    closed = (xp.expm1(zc) - zc) / zc**2 if k == 2 else (xp.expm1(zc) - zc - zc**2 / 2) / zc**3
    series, term = z * 0, z * 0 + 1 / math.factorial(k)
    for j in range(12):
        series = series + term
        term = term * z / (j + k + 1)
    return xp.where(small, series, closed)


def euler_ancestral_step(
    x_t: Any,
    eps: Any,
    alpha_bar_t: Any,
    alpha_bar_prev: Any,
    noise: Any,
    clip_range: float | None = 1.0,
    eps_rule: str = DEFAULT_EPS_RULE,
) -> Any:
    """One Euler ancestral update x_t -> x_{t_prev} (Karras et al. 2022's ancestral Euler, as diffusers'
    ``EulerAncestralDiscreteScheduler``), on diffzoo's variance-preserving x: the DDIM update at eta = 1.

    In the variance-exploding variable ``x / sqrt(alpha_bar)`` with ``sigma^2 = (1 - alpha_bar) /
    alpha_bar``, the step goes down to ``sigma_down = sigma_prev^2 / sigma_t`` along the derivative
    ``eps`` and adds ``sigma_up = sqrt(sigma_prev^2 - sigma_down^2)`` of fresh noise:
    ``x_prev = sqrt(alpha_bar_prev) (x0 + sigma_down eps + sigma_up noise)``. Term by term that is
    ``ddim_step`` at eta = 1 (``sqrt(alpha_bar_prev) sigma_up`` is its sigma, ``sqrt(alpha_bar_prev)
    sigma_down`` its direction coefficient), so it is computed by it; tests/test_diffusers.py checks
    it against the scheduler. Always stochastic; on the last step (``alpha_bar_prev = 1``) it returns x0.

    Args:
        x_t, eps: the sample and the predicted noise (B, C, H, W), torch or numpy.
        alpha_bar_t, alpha_bar_prev: scalars or per-sample (B,); ``alpha_bar_prev = 1`` on the last step.
        noise: N(0, I) noise of x_t's shape (every step draws it).
        clip_range, eps_rule: the x0 clamp and the eps the step remixes it with (``ddim_step``);
            diffusers' scheduler is ``clip_range=None`` (or ``eps_rule="model"``, the network's eps).
    """
    return ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta=1.0, noise=noise, clip_range=clip_range, eps_rule=eps_rule)


def unipc_step(
    x_t: Any,
    eps: Any,
    x_last: Any,
    x0_last: Any,
    x0_last2: Any,
    alpha_bar_t: Any,
    alpha_bar_prev: Any,
    alpha_bar_last: Any,
    alpha_bar_last2: Any,
    clip_range: float | None = 1.0,
    eps_rule: str = DEFAULT_EPS_RULE,
) -> tuple[Any, Any, Any, Any]:
    """One UniPC step (Zhao et al. 2023; diffusers' ``UniPCMultistepScheduler`` defaults: bh2, order 2, data
    prediction, lower order on the first and last steps): correct x_t, then predict x_{t_prev}.

    The network was evaluated at the predictor's ``x_t``; its x0 first corrects x_t (UniC: the
    update from the step before, ``x_last`` at ``alpha_bar_last``, redone with this x0 as well;
    second order where two earlier predictions exist), then the predictor (UniP-2 with
    B(h) = e^h - 1, which is DPM-Solver++(2M)'s update) goes from the corrected x_t to
    ``alpha_bar_prev`` without another network call. In lambda (``_log_snr``), with
    ``h = lambda_t - lambda_last``, ``r = (lambda_last2 - lambda_last) / h`` and ``phi_k``:
    ``x_c = (sigma_t / sigma_last) x_last - alpha_t (e^-h - 1) (x0_last + rho_1 (x0_last2 - x0_last) / r
    + rho_2 (x0 - x0_last))``, ``rho`` solving ``[[1, 1], [r, 1]] rho = [b_1, b_2]``,
    ``b_k = k! (-h) phi_{k+1}(-h) / (e^-h - 1)``; first order ``rho = (0, 1/2)``.

    Args:
        x_t, eps: the predicted sample and the network's eps there (B, C, H, W), torch or numpy.
        x_last: the corrected sample of the step before (the one its predictor started from).
        x0_last, x0_last2: the x0 predicted at the previous two steps' timesteps (any values where none).
        alpha_bar_t, alpha_bar_prev, alpha_bar_last, alpha_bar_last2: scalars or per-sample (B,);
            ``alpha_bar_prev = 1`` on the last step, ``alpha_bar_last = 0`` on the first and
            ``alpha_bar_last2 = 0`` on the first two.
        clip_range, eps_rule: as ``dpmpp_2m_step`` (written in x0 alone: the "clipped" rule).

    Returns:
        ``(x_prev, x_corrected, x0, x0_last)``: the next sample, and the next step's ``x_last``,
        ``x0_last`` and ``x0_last2``.
    """
    _check_step_options(clip_range, eps_rule)
    _check_step_inputs({"x_t": x_t, "eps": eps, "x_last": x_last, "x0_last": x0_last, "x0_last2": x0_last2}, alpha_bar_t,
                       alpha_bar_prev, alpha_bar_last=alpha_bar_last, alpha_bar_last2=alpha_bar_last2)
    xp = _xp(x_t)
    a_t, a_prev = _coef(alpha_bar_t, x_t), _coef(alpha_bar_prev, x_t)
    a_last, a_last2 = _coef(alpha_bar_last, x_t), _coef(alpha_bar_last2, x_t)
    x0, _ = predict_x0(x_t, eps, a_t, clip_range, eps_rule)

    # UniC, where there is a step before (a_last > 0); the logs of stand-ins elsewhere, as in _multistep_update
    corrected, second = a_last > 0, (a_last > 0) & (a_last2 > 0)
    a_l = xp.where(corrected, a_last, a_t * 0.5)
    a_l2 = xp.where(second, a_last2, a_l * 0.5)
    h = _log_snr(a_t) - _log_snr(a_l)
    r = (_log_snr(a_l2) - _log_snr(a_l)) / h
    b_h = xp.expm1(-h)
    b1, b2 = -h * _phi(-h, 2) / b_h, -2 * h * _phi(-h, 3) / b_h
    rho1 = xp.where(second, (b1 - b2) / (1 - r), 0 * h)
    rho2 = xp.where(second, b1 - rho1, 0 * h + 0.5)
    ratio = (1 - a_t) ** 0.5 / (1 - a_l) ** 0.5  # sigma_t / sigma_last
    d = x0_last + rho1 * (x0_last2 - x0_last) / r + rho2 * (x0 - x0_last)
    x_c = xp.where(corrected, ratio * x_last + (a_t**0.5 - ratio * a_l**0.5) * d, x_t)

    return _multistep_update(x_c, x0, x0_last, a_t, a_prev, a_last), x_c, x0, x0_last

"""Noise schedules for DDPM/DDIM: the betas and their cumulative product alpha-bar.

Linear schedule from Ho et al. 2020 (DDPM, sec. 4); cosine schedule from Nichol & Dhariwal 2021
(Improved DDPM, eq. 17); ``scaled_linear`` (linear in sqrt(beta), Stable Diffusion's) and ``trained``
(betas given as a list) as diffusers' schedulers name them (``zoo.diffusers_schedulers`` maps a diffusers
scheduler config onto these). Computed in float64 and never changed after release: a trained model
is only valid with the exact schedule it was trained on.

Notation:
    code               paper
    betas[t]           beta_t
    alphas_cumprod[t]  alpha-bar_t = prod_{s<=t} (1 - beta_s)
    T                  num_train_timesteps
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from zoo.validate import check_int, check_real

__all__ = ["Schedule", "linear_schedule", "cosine_schedule", "scaled_linear_schedule", "trained_schedule", "make_schedule",
           "SCHEDULES", "NAMED_SCHEDULES", "MAX_TRAIN_TIMESTEPS"]


@dataclass(frozen=True, eq=False)
class Schedule:
    """A named noise schedule; ``name`` + ``params`` rebuild it exactly (see ``make_schedule``)."""

    name: str
    params: dict[str, Any]
    betas: np.ndarray = field(repr=False)  # (T,) float64
    alphas_cumprod: np.ndarray = field(repr=False)  # (T,) float64

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: ``make_schedule(**s.to_dict())`` rebuilds it."""
        return {"name": self.name, **self.params}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        return make_schedule(**d)


# A bound on T: DDPM uses 1,000, improved DDPM 4,000; 1e10 in a weights header would be 240 GB of schedule.
MAX_TRAIN_TIMESTEPS = 100_000


def _check_T(num_train_timesteps: int) -> int:
    return check_int("num_train_timesteps", num_train_timesteps, 1, MAX_TRAIN_TIMESTEPS)


def _finish(name: str, params: dict[str, Any], betas: np.ndarray) -> Schedule:
    betas = np.ascontiguousarray(betas, dtype=np.float64)
    betas.setflags(write=False)
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod.setflags(write=False)
    return Schedule(name=name, params=params, betas=betas, alphas_cumprod=alphas_cumprod)


def linear_schedule(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Betas spaced linearly from ``beta_start`` to ``beta_end`` (DDPM's choice for T=1000)."""
    num_train_timesteps = _check_T(num_train_timesteps)
    beta_start, beta_end = _check_betas(beta_start, beta_end)
    betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    params = {"num_train_timesteps": num_train_timesteps, "beta_start": float(beta_start), "beta_end": float(beta_end)}
    return _finish("linear", params, betas)


def cosine_schedule(num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """alpha-bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas clipped at ``max_beta`` (Improved DDPM eq. 17)."""
    num_train_timesteps = _check_T(num_train_timesteps)
    s = check_real("s", s, 0.0)  # finite: s = inf gives NaN alpha-bars
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta={max_beta!r} is invalid: expected 0 < max_beta < 1")

    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / num_train_timesteps + s) / (1.0 + s) * math.pi / 2.0) ** 2

    steps = np.arange(num_train_timesteps + 1, dtype=np.float64)
    betas = np.minimum(1.0 - f(steps[1:]) / f(steps[:-1]), max_beta)
    params = {"num_train_timesteps": num_train_timesteps, "s": float(s), "max_beta": float(max_beta)}
    return _finish("cosine", params, betas)


def _check_betas(beta_start: float, beta_end: float) -> tuple[float, float]:
    beta_start, beta_end = check_real("beta_start", beta_start), check_real("beta_end", beta_end)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"beta_start={beta_start!r}, beta_end={beta_end!r} are invalid: expected 0 < beta_start <= beta_end < 1"
        )
    return beta_start, beta_end


def scaled_linear_schedule(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """Betas whose square roots are spaced linearly (diffusers' ``scaled_linear``, Stable Diffusion's defaults)."""
    num_train_timesteps = _check_T(num_train_timesteps)
    beta_start, beta_end = _check_betas(beta_start, beta_end)
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    params = {"num_train_timesteps": num_train_timesteps, "beta_start": float(beta_start), "beta_end": float(beta_end)}
    return _finish("scaled_linear", params, betas)


def trained_schedule(betas: Any, num_train_timesteps: int | None = None) -> Schedule:
    """The given betas (diffusers' ``trained_betas``): a list of T numbers in (0, 1)."""
    try:
        arr = np.asarray(betas, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or not 1 <= len(arr) <= MAX_TRAIN_TIMESTEPS or not np.all((arr > 0) & (arr < 1)):
        raise ValueError(f"betas={_brief(betas)} are invalid: expected a list of 1..{MAX_TRAIN_TIMESTEPS:,} numbers, "
                         "each with 0 < beta < 1")
    if num_train_timesteps is not None and _check_T(num_train_timesteps) != len(arr):
        raise ValueError(f"num_train_timesteps={num_train_timesteps} does not match the {len(arr)} betas given")
    return _finish("trained", {"num_train_timesteps": len(arr), "betas": arr.tolist()}, arr)


def _brief(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


SCHEDULES: dict[str, Callable[..., Schedule]] = {"linear": linear_schedule, "cosine": cosine_schedule,
                                                  "scaled_linear": scaled_linear_schedule, "trained": trained_schedule}
# The schedules a name and T define (what `--schedule` offers): "trained" needs its betas.
NAMED_SCHEDULES = ("linear", "cosine", "scaled_linear")


def make_schedule(name: str, **params: Any) -> Schedule:
    """Build a schedule by name: ``make_schedule("cosine", num_train_timesteps=1000)``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: expected one of {sorted(SCHEDULES)}")
    fn = SCHEDULES[name]
    accepted = [p for p in fn.__code__.co_varnames[: fn.__code__.co_argcount]]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for schedule {name!r}: accepted are {accepted}")
    return fn(**params)

"""diffusers scheduler configs mapped onto diffzoo's schedules: every key honoured, inert, or refused by name.

The configs of DDPM's scheduler and of every solver's scheduler in the solver table (``zoo.solvers``:
DDIM, DPM-Solver multistep, Euler ancestral, UniPC multistep) become a ``Schedule``, an x0 clip and
the diffzoo spacing of their timestep grid (``scheduler_schedule``); a diffzoo schedule becomes a
``DDIMScheduler`` config (``scheduler_config``). Torch-free.
"""

from __future__ import annotations

import math
from typing import Any

from zoo.diffusion import SPACINGS
from zoo.schedules import Schedule, cosine_schedule, make_schedule
from zoo.solvers import SOLVER_TABLE

__all__ = ["SCHEDULERS", "scheduler_schedule", "scheduler_config"]

# The schedulers with an x0 clamp (clip_sample, on by default); the others have none (their thresholding is refused below).
_CLIPPED = ("DDPMScheduler", "DDIMScheduler")
# The diffusers schedulers whose configs map onto a diffzoo schedule: DDPM's (training) and each solver's own, with
# the default of clip_sample (None: the scheduler has no clip).
SCHEDULERS: dict[str, bool | None] = {
    name: True if name in _CLIPPED else None for name in ("DDPMScheduler", *(s.diffusers for s in SOLVER_TABLE.values()))}
# Each scheduler's default timestep_spacing and the spacings whose grid is not diffzoo's of the same name (DPM-Solver's
# and UniPC's "linspace" and "leading" take N + 1 points and drop the last; Euler's "linspace" is fractional).
_DEFAULT_SPACING = {"DPMSolverMultistepScheduler": "linspace", "UniPCMultistepScheduler": "linspace",
                    "EulerAncestralDiscreteScheduler": "linspace"}
_OTHER_GRIDS = {"DPMSolverMultistepScheduler": ("linspace", "leading"), "UniPCMultistepScheduler": ("linspace", "leading"),
                "EulerAncestralDiscreteScheduler": ("linspace",)}

# Keys diffzoo honours only at one value (the math its solvers implement); any other value is refused by name.
_FIXED: dict[str, tuple[Any, str]] = {
    "prediction_type": ("epsilon", "diffzoo's training loss, solvers and graphs take the network's output as eps; "
                                   "'v_prediction' and 'sample' models are not supported"),
    "thresholding": (False, "dynamic thresholding is not implemented; clip_sample is"),
    "rescale_betas_zero_snr": (False, "zero-terminal-SNR rescaling is not implemented"),
    "steps_offset": (0, "diffzoo's spacings start at timestep 0"),
    "set_alpha_to_one": (True, "diffzoo's last DDIM step goes to alpha-bar 1"),
    "variance_type": ("fixed_small", "diffzoo's eta = 1 DDIM is DDPM with the fixed_small variance"),
    "solver_order": (2, "diffzoo's multistep solvers are second order (DPM-Solver++(2M), UniPC bh2)"),
    "algorithm_type": ("dpmsolver++", "diffzoo implements DPM-Solver++ (data prediction)"),
    "solver_type": ("midpoint", "diffzoo's DPM-Solver++(2M) uses the midpoint update"),
    "final_sigmas_type": ("zero", "diffzoo's last step goes to sigma 0"),
    "euler_at_final": (False, "diffzoo's last DPM-Solver++ step is first order only because it is the last"),
    "use_karras_sigmas": (False, "diffzoo's solvers step on the timestep grid"),
    "use_exponential_sigmas": (False, "diffzoo's solvers step on the timestep grid"),
    "use_beta_sigmas": (False, "diffzoo's solvers step on the timestep grid"),
    "use_lu_lambdas": (False, "diffzoo's solvers step on the timestep grid"),
    "use_flow_sigmas": (False, "flow-matching sigmas are not supported"),
    "use_dynamic_shifting": (False, "dynamic shifting is not supported"),
    "lambda_min_clipped": (-math.inf, "diffzoo does not clip lambda"),
    "sigma_min": (None, "diffzoo's solvers step on the timestep grid"),
    "sigma_max": (None, "diffzoo's solvers step on the timestep grid"),
    "shift_terminal": (None, "diffzoo's solvers step on the timestep grid"),
}
# The keys one scheduler fixes at its own value (UniPC's solver_type is not DPM-Solver's).
_FIXED_BY_CLASS: dict[str, dict[str, tuple[Any, str]]] = {
    "UniPCMultistepScheduler": {
        "solver_type": ("bh2", "diffzoo's UniPC is bh2 (B(h) = e^h - 1)"),
        "predict_x0": (True, "diffzoo's UniPC is written in x0 (data prediction)"),
        "disable_corrector": ([], "diffzoo's UniPC corrects every step"),
        "solver_p": (None, "diffzoo's UniPC predictor is its own (UniP-2)"),
        "lower_order_final": (True, "diffzoo's last UniPC step is first order"),
    },
}
# Keys that only matter with a setting refused above, or that every value of leaves the schedule as it is.
_INERT = ("dynamic_thresholding_ratio", "sample_max_value", "flow_shift", "time_shift_type", "lower_order_final")
_MAPPED = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "clip_sample",
           "clip_sample_range", "timestep_spacing")
# diffusers' beta_schedule -> diffzoo's schedule (squaredcos_cap_v2 is Improved DDPM's cosine, s 0.008, max_beta 0.999)
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


def scheduler_schedule(config: dict[str, Any], source: str = "scheduler config") -> tuple[Schedule, float | None, str]:
    """``(schedule, clip_range, spacing)`` of a diffusers scheduler config (one of ``SCHEDULERS``).

    ``clip_range`` is the x0 clamp (``clip_sample_range``, or None without ``clip_sample``);
    ``spacing`` the diffzoo spacing that builds the scheduler's timestep grid (``diffzoo sample
    --spacing``), or None where none does (``_OTHER_GRIDS``: DPM-Solver's and UniPC's "linspace" and
    "leading" take N + 1 points and drop the last, Euler ancestral's "linspace" is fractional; their
    "trailing" is DDIM's).
    Raises ``ValueError`` naming ``source`` and the key it cannot honour.
    """
    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{source}: {key}={config.get(key)!r} is not supported: {why}")

    cls = config.get("_class_name")
    if cls is not None and cls not in SCHEDULERS:
        raise bad("_class_name", f"expected one of {sorted(SCHEDULERS)}")
    fixed = {**_FIXED, **_FIXED_BY_CLASS.get(cls, {})}
    known = set(fixed) | set(_INERT) | set(_MAPPED)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}: diffzoo understands {sorted(known)}")
    for key, (value, why) in fixed.items():
        got = config.get(key, value)
        if key == "variance_type" and got is None:  # DPM-Solver's default
            continue
        if got != value:
            raise bad(key, f"expected {value!r}: {why}")
    T = config.get("num_train_timesteps", 1000)
    try:
        if config.get("trained_betas") is not None:
            schedule = make_schedule("trained", betas=config["trained_betas"], num_train_timesteps=T)
        else:
            kind = config.get("beta_schedule", "linear")
            if kind not in _BETA_SCHEDULES:
                raise bad("beta_schedule", f"expected one of {sorted(_BETA_SCHEDULES)}, or trained_betas")
            if kind == "squaredcos_cap_v2":
                schedule = cosine_schedule(T, s=0.008, max_beta=0.999)
            else:
                schedule = make_schedule(_BETA_SCHEDULES[kind], num_train_timesteps=T, beta_start=config.get("beta_start", 0.0001),
                                         beta_end=config.get("beta_end", 0.02))
    except (TypeError, ValueError) as e:
        if str(e).startswith(source):
            raise
        raise ValueError(f"{source}: {e}") from None
    clip = config.get("clip_sample", SCHEDULERS.get(cls, True))
    if clip and cls in SCHEDULERS and not SCHEDULERS[cls]:
        raise bad("clip_sample", f"{cls} has no clip_sample")
    clip_range = config.get("clip_sample_range", 1.0) if clip else None
    if clip_range is not None and (isinstance(clip_range, bool) or not isinstance(clip_range, (int, float))
                                   or not math.isfinite(clip_range) or not clip_range > 0):
        raise bad("clip_sample_range", "expected a positive number")
    clip_range = None if clip_range is None else float(clip_range)
    spacing = config.get("timestep_spacing", _DEFAULT_SPACING.get(cls, "leading"))
    if spacing not in SPACINGS:
        raise bad("timestep_spacing", f"expected one of {sorted(SPACINGS)}")
    return schedule, clip_range, None if spacing in _OTHER_GRIDS.get(cls, ()) else spacing


def scheduler_config(schedule: Schedule, clip_range: float | None) -> dict[str, Any]:
    """A DDIMScheduler config that computes ``schedule`` (named where diffusers has the name, else its betas)."""
    p = schedule.params
    if schedule.name in ("linear", "scaled_linear"):
        betas = {"beta_schedule": schedule.name, "beta_start": p["beta_start"], "beta_end": p["beta_end"]}
    elif schedule.name == "cosine" and (p["s"], p["max_beta"]) == (0.008, 0.999):
        betas = {"beta_schedule": "squaredcos_cap_v2"}
    else:
        betas = {"trained_betas": schedule.betas.tolist()}
    return {"num_train_timesteps": schedule.num_train_timesteps, **betas, "clip_sample": clip_range is not None,
            "clip_sample_range": clip_range or 1.0, "prediction_type": "epsilon", "timestep_spacing": "leading",
            "set_alpha_to_one": True, "steps_offset": 0}

"""Bring your own model: a diffusers ``UNet2DModel`` as the zoo's ``"diffusers_unet"`` entry, read from and written to folders.

A folder is what ``UNet2DModel.save_pretrained`` writes (``config.json`` and
``diffusion_pytorch_model.safetensors``), optionally with a ``scheduler_config.json`` beside it, or a
pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``). ``load_pretrained`` turns one into
the zoo model, its ``Schedule`` and its x0 clip; ``save_pretrained`` writes a zoo model back as a
folder that ``UNet2DModel.from_pretrained`` and diffusers' ``DDIMScheduler.from_pretrained`` load.

Only epsilon prediction is supported: diffzoo's training loss, both solvers and every exported graph
take the network's output as eps, so a "v_prediction" or "sample" model is refused with that reason
rather than converted (the conversion needs the schedule inside the network, at a cost in precision
near t = 0 for "sample"). Weights are read from safetensors only: a ``.bin`` file is a pickle.

diffusers is imported on first use (the ``diffusers`` extra); without it, building this entry is
one ``ModuleNotFoundError`` naming the extra.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.configs import DiffusersUNetConfig
from zoo.diffusion import SPACINGS
from zoo.files import check_output_dir, output_lock, staged_dir, unknown_entries
from zoo.models import _Denoiser, check_timesteps, model_labels
from zoo.schedules import Schedule, cosine_schedule, make_schedule
from zoo.validate import first_line, install_hint

__all__ = ["DiffusersUNet", "Pretrained", "load_pretrained", "save_pretrained", "scheduler_schedule", "SCHEDULERS",
           "read_config", "EXTRA", "CONFIG_NAME", "WEIGHTS_NAME", "SCHEDULER_NAME", "DDPM_CIFAR10"]

EXTRA = f"diffusers is not installed: {install_hint('diffusers')}, or pip install diffusers"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULER_NAME = "scheduler_config.json"

# The DDPM CIFAR-10 architecture (Ho et al. 2020; google/ddpm-cifar10-32's config.json): 35,746,307 parameters,
# self-attention at 16x16, 32x32 RGB. The full-size benchmark and slow test build it with a random init.
DDPM_CIFAR10 = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 32, "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "attention_head_dim": None,
}


def _unet_class():
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ModuleNotFoundError(EXTRA, name="diffusers") from None
    return UNet2DModel


class DiffusersUNet(_Denoiser):
    """``forward(x, t[, labels]) -> eps``: a diffusers ``UNet2DModel`` (``self.unet``) under the zoo's model interface.

    ``labels`` are class indices 0..K (K: the null class) for a class-conditional unet
    (``num_class_embeds = K + 1``); a conditional model without labels predicts for the null class.
    """

    name = "diffusers_unet"
    config_class = DiffusersUNetConfig
    supports_int8 = False
    int8_note = "its GroupNorm layers and attention sit between the convolutions (as for 'unet')"

    def __init__(self, config: DiffusersUNetConfig) -> None:
        super().__init__(config)
        cls = _unet_class()
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config.unet) - accepted)
        if unknown:
            raise ValueError(f"unknown UNet2DModel config key(s) {unknown} for diffusers "
                             f"{_diffusers_version()}: accepted are {sorted(accepted)}")
        try:
            self.unet = cls(**config.unet)
        except (TypeError, ValueError, AssertionError, AttributeError, KeyError) as e:
            raise ValueError(f"the UNet2DModel config is invalid: {first_line(e, 300)}") from None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_timesteps(t, self.config.num_train_timesteps)
        labels = model_labels(labels, t, self.config.num_classes)
        return self.unet(x, t, class_labels=labels, return_dict=False)[0]  # (B, C, H, W)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


# --- schedulers ---------------------------------------------------------------------------------------------

# The diffusers schedulers whose configs map onto a diffzoo schedule, with the default of clip_sample
# (the x0 clamp; DPM-Solver has none: its thresholding is refused below).
SCHEDULERS = {"DDPMScheduler": True, "DDIMScheduler": True, "DPMSolverMultistepScheduler": None}

# Keys diffzoo honours only at one value (the math its solvers implement); any other value is refused by name.
_FIXED: dict[str, tuple[Any, str]] = {
    "prediction_type": ("epsilon", "diffzoo's training loss, solvers and graphs take the network's output as eps; "
                                   "'v_prediction' and 'sample' models are not supported"),
    "thresholding": (False, "dynamic thresholding is not implemented; clip_sample is"),
    "rescale_betas_zero_snr": (False, "zero-terminal-SNR rescaling is not implemented"),
    "steps_offset": (0, "diffzoo's spacings start at timestep 0"),
    "set_alpha_to_one": (True, "diffzoo's last DDIM step goes to alpha-bar 1"),
    "variance_type": ("fixed_small", "diffzoo's eta = 1 DDIM is DDPM with the fixed_small variance"),
    "solver_order": (2, "diffzoo's DPM-Solver++ is the second-order multistep (2M)"),
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
}
# Keys that only matter with a setting refused above, or that every value of leaves the schedule as it is.
_INERT = ("dynamic_thresholding_ratio", "sample_max_value", "flow_shift", "time_shift_type", "lower_order_final")
_MAPPED = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "clip_sample",
           "clip_sample_range", "timestep_spacing")
# diffusers' beta_schedule -> diffzoo's schedule (squaredcos_cap_v2 is Improved DDPM's cosine, s 0.008, max_beta 0.999)
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


def scheduler_schedule(config: dict[str, Any], source: str = "scheduler config") -> tuple[Schedule, float | None, str]:
    """``(schedule, clip_range, spacing)`` of a diffusers DDPM / DDIM / DPM-Solver scheduler config.

    ``clip_range`` is the x0 clamp (``clip_sample_range``, or None without ``clip_sample``);
    ``spacing`` the diffzoo spacing that builds the scheduler's timestep grid (``diffzoo sample
    --spacing``), or None where none does: DPMSolverMultistepScheduler's "linspace" and "leading"
    take N + 1 points and drop the last, unlike DDIM's (its "trailing" is DDIM's).
    Raises ``ValueError`` naming ``source`` and the key it cannot honour.
    """
    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{source}: {key}={config.get(key)!r} is not supported: {why}")

    cls = config.get("_class_name")
    if cls is not None and cls not in SCHEDULERS:
        raise bad("_class_name", f"expected one of {sorted(SCHEDULERS)}")
    known = set(_FIXED) | set(_INERT) | set(_MAPPED)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}: diffzoo understands {sorted(known)}")
    for key, (value, why) in _FIXED.items():
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
    if clip and cls == "DPMSolverMultistepScheduler":
        raise bad("clip_sample", "DPM-Solver has no clip_sample")
    clip_range = config.get("clip_sample_range", 1.0) if clip else None
    if clip_range is not None and (isinstance(clip_range, bool) or not isinstance(clip_range, (int, float))
                                   or not math.isfinite(clip_range) or not clip_range > 0):
        raise bad("clip_sample_range", "expected a positive number")
    clip_range = None if clip_range is None else float(clip_range)
    dpm = cls == "DPMSolverMultistepScheduler"
    spacing = config.get("timestep_spacing", "linspace" if dpm else "leading")
    if spacing not in SPACINGS:
        raise bad("timestep_spacing", f"expected one of {sorted(SPACINGS)}")
    return schedule, clip_range, None if dpm and spacing != "trailing" else spacing


def _scheduler_config(schedule: Schedule, clip_range: float | None) -> dict[str, Any]:
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


# --- folders -----------------------------------------------------------------------------------------------


# The eps rule of diffusers' DDIMScheduler.step (use_clipped_model_output=False, what DDIMPipeline passes by default):
# a folder's bundle keeps it, so that its images equal diffusers' pipelines (zoo.diffusion.EPS_RULES).
DIFFUSERS_EPS_RULE = "model"


@dataclass(frozen=True)
class Pretrained:
    """What a diffusers folder holds, as diffzoo uses it: the model, its schedule, x0 clip and default spacing."""

    model: DiffusersUNet
    schedule: Schedule
    clip_range: float | None
    spacing: str | None  # the diffzoo spacing of the scheduler's grid; None: not one of diffzoo's (scheduler_schedule)
    source: dict[str, Any]  # where each part came from (recorded in a bundle's manifest)
    eps_rule: str = DIFFUSERS_EPS_RULE  # what diffusers' DDIM step remixes the clipped x0 with


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON config file as a dict; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{str(path)!r} is not a readable JSON config: {first_line(e, 300)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} is not a config: expected a JSON object")
    return data


def _layout(folder: Path) -> tuple[Path, Path | None]:
    """(the UNet's folder, the scheduler config or None) of a UNet folder or a pipeline folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a directory: expected a diffusers UNet2DModel folder "
                                "(save_pretrained's config.json and diffusion_pytorch_model.safetensors)")
    if (folder / "model_index.json").is_file() and (folder / "unet").is_dir():  # a pipeline: unet/ and scheduler/
        unet, scheduler = folder / "unet", folder / "scheduler" / SCHEDULER_NAME
    else:
        unet, scheduler = folder, folder / SCHEDULER_NAME
    for path in (unet / CONFIG_NAME, scheduler):  # a FIFO, a device or a directory there is refused, never skipped
        if os.path.lexists(path) and not path.is_file():
            raise ValueError(f"{str(path)!r} is not a regular file: expected a JSON config as save_pretrained writes it")
    if not (unet / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{str(unet / CONFIG_NAME)!r} does not exist: expected a diffusers UNet2DModel folder "
                                "(save_pretrained's config.json and diffusion_pytorch_model.safetensors)")
    return unet, scheduler if scheduler.is_file() else None


def load_pretrained(folder: str | os.PathLike) -> Pretrained:
    """A diffusers ``UNet2DModel`` folder (or pipeline folder) as the ``"diffusers_unet"`` zoo model, in eval mode.

    The schedule comes from ``scheduler_config.json`` (DDPM, DDIM or DPM-Solver; see
    ``scheduler_schedule``); without one, DDPMScheduler's defaults (linear 1e-4..0.02, T = 1000,
    clip 1.0) as diffusers' ``DDPMPipeline`` would use. Every refusal is one ``ValueError`` (or
    ``FileNotFoundError``) naming the file and the key.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    unet_dir, scheduler_path = _layout(Path(folder))
    config_path = unet_dir / CONFIG_NAME
    unet = read_config(config_path)
    cls = unet.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"{str(config_path)!r}: _class_name={cls!r} is not supported: diffzoo imports diffusers' "
                         "'UNet2DModel' (a pixel-space epsilon predictor)")
    scheduler = read_config(scheduler_path) if scheduler_path is not None else {"_class_name": "DDPMScheduler"}
    schedule, clip_range, spacing = scheduler_schedule(
        scheduler, repr(str(scheduler_path)) if scheduler_path is not None else "DDPMScheduler's defaults")
    weights = unet_dir / WEIGHTS_NAME
    if not weights.is_file():
        found = sorted(p.name for p in unet_dir.iterdir() if p.name.startswith("diffusion_pytorch_model"))
        why = (f"only {found} there: a .bin is a pickle, which diffzoo does not load; re-save with "
               "save_pretrained(..., safe_serialization=True)" if found else "save_pretrained writes it")
        raise FileNotFoundError(f"{str(weights)!r} does not exist ({why})")
    try:
        config = DiffusersUNetConfig(unet=unet, num_train_timesteps=schedule.num_train_timesteps)
        from zoo.registry import build

        model = build("diffusers_unet", **dataclasses.asdict(config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{str(config_path)!r}: {first_line(e, 300)}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{str(weights)!r} is not a readable safetensors file: {first_line(e, 300)}") from None
    try:
        model.unet.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise ValueError(f"{str(weights)!r} does not match {str(config_path)!r}: {detail}") from None
    source = {"diffusers": str(Path(folder).resolve()), "scheduler": str(scheduler_path) if scheduler_path else None,
              "scheduler_class": scheduler.get("_class_name"), "timestep_spacing": scheduler.get("timestep_spacing"),
              "spacing": spacing, "diffusers_version": unet.get("_diffusers_version")}
    return Pretrained(model.eval(), schedule, clip_range, spacing, source)


def _not_a_written_folder(folder: Path) -> str | None:
    """Why ``folder`` is not one ``save_pretrained`` wrote (what ``force`` may replace), or None: exactly its three
    files, a UNet2DModel's ``config.json`` among them."""
    why = unknown_entries(folder, {CONFIG_NAME, WEIGHTS_NAME, SCHEDULER_NAME})
    if why is not None:
        return why
    try:
        config = read_config(folder / CONFIG_NAME)
    except ValueError as e:
        return str(e)
    return None if config.get("_class_name") == "UNet2DModel" else f"its {CONFIG_NAME} is not a UNet2DModel's"


def save_pretrained(model: torch.nn.Module, schedule: Schedule, out: str | os.PathLike, clip_range: float | None = 1.0,
                    force: bool = False) -> Path:
    """Write a ``"diffusers_unet"`` model as a diffusers folder: ``UNet2DModel.save_pretrained`` plus a DDIM
    ``scheduler_config.json`` of ``schedule`` and ``clip_range``; staged and renamed, never partial.

    diffusers' ``DDIMScheduler`` with that config and ``DDIMPipeline`` sample what diffzoo's DDIM
    ("leading" spacing) samples, within float32 rounding (diffusers computes the betas in float32).
    """
    if getattr(model, "name", None) != DiffusersUNet.name:
        raise ValueError(f"only a 'diffusers_unet' model can be written as a diffusers folder; this is "
                         f"{getattr(model, 'name', type(model).__name__)!r} (export it as a bundle instead)")
    if schedule.num_train_timesteps != model.config.num_train_timesteps:
        raise ValueError(f"the schedule has T={schedule.num_train_timesteps} but the model was built for "
                         f"num_train_timesteps={model.config.num_train_timesteps}")
    out = Path(out)
    if check_output_dir(out, "a diffusers UNet2DModel folder as diffzoo writes it", _not_a_written_folder) and not force:
        raise FileExistsError(f"{str(out)!r} holds a diffusers UNet2DModel folder: pass force=True (--force) to replace "
                              "it, or choose another directory")
    _unet_class()  # diffusers installed, or one error naming the extra
    from diffusers import DDIMScheduler

    from safetensors import SafetensorError

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with output_lock(out), staged_dir(out) as tmp:
            model.unet.save_pretrained(tmp, safe_serialization=True)
            DDIMScheduler(**_scheduler_config(schedule, clip_range)).save_config(tmp)
    except (OSError, SafetensorError) as e:  # a full disk: safetensors' own error; nothing was left (staged_dir)
        free = shutil.disk_usage(out.parent).free
        raise OSError(f"cannot write the diffusers folder {str(out)!r} ({free:,} bytes free there): {first_line(e, 200)}; "
                      "nothing was written") from None
    return out

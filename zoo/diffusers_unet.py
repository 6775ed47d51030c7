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

The model itself is ``zoo.diffusers_model.DiffusersUNet`` (the registry entry), the scheduler mapping
``zoo.diffusers_schedulers``; this module reads and writes folders (above the registry: it builds the
model by name) and is where users find all three. diffusers is imported on first use (the ``diffusers``
extra).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.configs import DiffusersUNetConfig
from zoo.diffusers_model import DDPM_CIFAR10, EXTRA, DiffusersUNet, _unet_class
from zoo.diffusers_schedulers import SCHEDULERS, scheduler_config, scheduler_schedule
from zoo.files import check_output_dir, output_lock, staged_dir, unknown_entries
from zoo.registry import build
from zoo.schedules import Schedule
from zoo.validate import first_line

__all__ = ["DiffusersUNet", "Pretrained", "load_pretrained", "save_pretrained", "scheduler_schedule", "SCHEDULERS",
           "read_config", "EXTRA", "CONFIG_NAME", "WEIGHTS_NAME", "SCHEDULER_NAME", "DDPM_CIFAR10", "DIFFUSERS_EPS_RULE"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULER_NAME = "scheduler_config.json"

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
            DDIMScheduler(**scheduler_config(schedule, clip_range)).save_config(tmp)
    except (OSError, SafetensorError) as e:  # a full disk: safetensors' own error; nothing was left (staged_dir)
        free = shutil.disk_usage(out.parent).free
        raise OSError(f"cannot write the diffusers folder {str(out)!r} ({free:,} bytes free there): {first_line(e, 200)}; "
                      "nothing was written") from None
    return out

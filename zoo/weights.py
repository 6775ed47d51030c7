"""Model weights as safetensors with the model's name, config and schedule in the header.

One format serves training checkpoints and the weights of an exported bundle: ``load_weights``
rebuilds the exact model (``zoo.build(name, **config)``) without unpickling anything. The header is
read by ``zoo.weights_header`` alone (torch-free).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from zoo.files import atomic_write
from zoo.registry import build
from zoo.schedules import Schedule
from zoo.weights_header import HEADER_KEY, read_weights_metadata

__all__ = ["save_weights", "load_weights", "read_weights_metadata", "class_names"]


def save_weights(path: str | os.PathLike, model: torch.nn.Module, schedule: Schedule, **extra: Any) -> Path:
    """Write ``model``'s state dict atomically, with name, config, schedule and ``extra`` (JSON) as metadata."""
    import dataclasses

    meta = {"model": {"name": model.name, "config": dataclasses.asdict(model.config)}, "schedule": schedule.to_dict(), **extra}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, save(state, metadata={HEADER_KEY: json.dumps(meta)}))


def load_weights(path: str | os.PathLike) -> tuple[torch.nn.Module, Schedule, dict[str, Any]]:
    """Rebuild the model from a weights file; returns ``(model in eval mode, schedule, metadata)``."""
    meta = read_weights_metadata(path)
    model = build(meta["model"]["name"], **meta["model"]["config"])
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors weights file: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"weights in {str(path)!r} do not match the {meta['model']['name']!r} config: {first}") from None
    return model.eval(), Schedule.from_dict(meta["schedule"]), meta


def class_names(meta: dict[str, Any]) -> tuple[str, ...] | None:
    """The class names a conditional run kept in its weights header (``data.classes.names``), or None."""
    classes = (meta.get("data") or {}).get("classes")
    return tuple(classes["names"]) if isinstance(classes, dict) and isinstance(classes.get("names"), list) else None


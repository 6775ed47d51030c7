"""Model weights as safetensors with the model's name, config and schedule in the header.

One format serves training checkpoints and the weights of an exported bundle: ``load_weights``
rebuilds the exact model (``zoo.build(name, **config)``) without unpickling anything.
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

__all__ = ["save_weights", "load_weights", "read_weights_metadata"]

_KEY = "diffzoo"


def save_weights(path: str | os.PathLike, model: torch.nn.Module, schedule: Schedule, **extra: Any) -> Path:
    """Write ``model``'s state dict atomically, with name, config, schedule and ``extra`` (JSON) as metadata."""
    import dataclasses

    meta = {"model": {"name": model.name, "config": dataclasses.asdict(model.config)}, "schedule": schedule.to_dict(), **extra}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, save(state, metadata={_KEY: json.dumps(meta)}))


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a weights file, read from its header only."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(_KEY)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a safetensors weights file: {e}") from None
    if raw is None:
        raise ValueError(f"{str(path)!r} has no diffzoo metadata: it was not written by diffzoo's save_weights")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r}: its diffzoo metadata is not valid JSON ({e})") from None
    _check_metadata(meta, path)
    return meta


def _check_metadata(meta: Any, path: Path) -> None:
    """The keys ``load_weights`` reads, with their types: a bad header is one ValueError naming the key."""
    wanted = (("model", dict), ("model.name", str), ("model.config", dict), ("schedule", dict))
    for key, kind in wanted:
        obj = meta
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise ValueError(f"{str(path)!r}: its diffzoo metadata lacks {key!r} (not written by save_weights, or edited)")
            obj = obj[part]
        if not isinstance(obj, kind):
            raise ValueError(f"{str(path)!r}: its diffzoo metadata has {key} = {obj!r}, expected a {kind.__name__}")


def load_weights(path: str | os.PathLike) -> tuple[torch.nn.Module, Schedule, dict[str, Any]]:
    """Rebuild the model from a weights file; returns ``(model in eval mode, schedule, metadata)``."""
    meta = read_weights_metadata(path)
    model = build(meta["model"]["name"], **meta["model"]["config"])
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"weights in {str(path)!r} do not match the {meta['model']['name']!r} config: {first}") from None
    return model.eval(), Schedule.from_dict(meta["schedule"]), meta

"""A training run's directory: its checkpoints (``last`` -> ``checkpoints/step_N``), their EMA weights and state.

The one place the run layout is written: the trainer writes it, and ``export --checkpoint``,
``eval RUN`` and ``bench --checkpoint`` find a run's weights through ``run_weights``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from zoo.files import unknown_entries
from zoo.validate import first_line

__all__ = ["CHECKPOINT_WEIGHTS", "CHECKPOINT_STATE", "RUN_ENTRIES", "run_weights", "load_state", "not_a_run"]

CHECKPOINT_WEIGHTS = "ema.safetensors"  # the EMA weights: what you sample from and export
CHECKPOINT_STATE = "state.pt"  # everything needed to resume; read with torch.load(weights_only=True)
# Everything a run directory holds (the trainer writes nothing else there; `.last.PID` is its link being swapped in).
RUN_ENTRIES = {"config.json", "summary.json", "log.jsonl", "samples", "checkpoints", "last"}


def not_a_run(run_dir: str | os.PathLike) -> str | None:
    """Why a non-empty ``run_dir`` is not a diffzoo training run (the trainer writes into nothing else), or None.

    A run holds only ``RUN_ENTRIES``, and its ``config.json`` is a training config.
    """
    run_dir = Path(run_dir)
    why = unknown_entries(run_dir, RUN_ENTRIES | {p.name for p in run_dir.glob(".last.*") if p.is_symlink()})
    if why is not None:
        return why
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        return "no config.json"
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return "its config.json is not readable JSON"
    if not (isinstance(config, dict) and {"model", "data", "steps"} <= set(config)):
        return "its config.json is not a diffzoo training config"
    return None

_STATE_KEYS = ("step", "config", "model", "ema", "optimizer")


def load_state(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The last checkpoint directory of a run and its state, loaded with ``weights_only=True``."""
    last = Path(run_dir) / "last"
    if not last.exists():
        raise FileNotFoundError(f"no checkpoint in {str(run_dir)!r} (expected {str(last)!r}): nothing to resume")
    ckpt = last.resolve()
    checkpoints = (Path(run_dir) / "checkpoints").resolve()
    if ckpt.parent != checkpoints or not ckpt.name.startswith("step_"):
        raise ValueError(f"{str(last)!r} points to {str(ckpt)!r}, outside this run's checkpoints/: refusing to resume "
                         "another run's state")
    path = ckpt / CHECKPOINT_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint state {str(path)!r} is missing: nothing to resume") from None
    except Exception as e:  # noqa: BLE001  torch raises UnpicklingError, RuntimeError, EOFError... for a bad file
        first = first_line(e)
        raise ValueError(f"{str(path)!r} is not a diffzoo training state (truncated, empty, or holding objects a "
                         f"weights-only load refuses): {first}") from None
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{str(path)!r} is not a diffzoo training state: it lacks {missing}")
    if not isinstance(state["step"], int) or ckpt.name != f"step_{state['step']:07d}":
        raise ValueError(f"{str(path)!r} holds step {state['step']!r} but lives in {ckpt.name!r}: a state copied from "
                         "another checkpoint or run; refusing to resume from it")
    return ckpt, state


def run_weights(path: str | os.PathLike) -> Path:
    """A weights file as given, or a training run directory's last EMA weights (``last/ema.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "last" / CHECKPOINT_WEIGHTS, p / CHECKPOINT_WEIGHTS):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{str(path)!r} is a directory without a checkpoint (no last/{CHECKPOINT_WEIGHTS})")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return p

"""diffzoo's model zoo: a registry of small epsilon-predicting denoisers, DDPM/DDIM/DPM-Solver++ math and image output.

``zoo.diffusion``, ``zoo.schedules`` and ``zoo.images`` import no torch, so the deployment runtime can
use them; the torch-backed names (``build``, the models, ``append_time_channel``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from zoo import diffusion, images, schedules
from zoo.diffusion import (
    SOLVERS,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    dpmpp_2m_sample,
    dpmpp_2m_step,
    make_training_sample,
    sample,
)
from zoo.images import save_grid, write_ppm
from zoo.schedules import Schedule, cosine_schedule, linear_schedule, make_schedule

__all__ = [
    "build",
    "available",
    "parameter_count",
    "register",
    "append_time_channel",
    "ConvConfig",
    "ResidualConfig",
    "UNetConfig",
    "DenoiserConfig",
    "diffusion",
    "images",
    "schedules",
    "Schedule",
    "linear_schedule",
    "cosine_schedule",
    "make_schedule",
    "ddim_timesteps",
    "make_training_sample",
    "ddim_step",
    "ddim_sample",
    "dpmpp_2m_step",
    "dpmpp_2m_sample",
    "sample",
    "SOLVERS",
    "write_ppm",
    "save_grid",
]

# Loaded on first attribute access (PEP 562), so that `import zoo.diffusion` stays torch-free.
_LAZY = {
    "build": "zoo.registry",
    "available": "zoo.registry",
    "parameter_count": "zoo.registry",
    "register": "zoo.registry",
    "append_time_channel": "zoo.models",
    "ConvConfig": "zoo.models",
    "ResidualConfig": "zoo.models",
    "UNetConfig": "zoo.models",
    "DenoiserConfig": "zoo.models",
}
# Submodules that import torch: ``zoo.train``, ``zoo.data``... work after a plain ``import zoo``.
_LAZY_MODULES = ("train", "data", "metrics", "checkpoint", "models", "registry", "allocator", "files", "resources", "validate")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        importlib.import_module("zoo.models")  # registers the models before any build()
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"zoo.{name}")
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")

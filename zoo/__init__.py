"""diffzoo's model zoo: a registry of small epsilon-predicting denoisers, DDPM/DDIM/DPM-Solver++ math and image output.

The core (registry, models, schedules, solvers, weights, images) is this package's modules;
training, data sources and the quality metric live apart in ``zoo.training``, which nothing in the
core, ``export`` or the runtime core imports. ``zoo.diffusion``, ``zoo.solvers``, ``zoo.schedules`` and
``zoo.images`` import no torch, so the deployment runtime can use them; the torch-backed names
(``build``, the models, ``append_time_channel``) and ``zoo.train`` / ``zoo.data`` / ``zoo.metrics``
(``zoo.training``'s modules) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from zoo import diffusion, images, schedules, solvers
from zoo.diffusion import ddim_step, ddim_timesteps, dpmpp_2m_step, euler_ancestral_step, make_training_sample, unipc_step
from zoo.images import save_grid, write_ppm
from zoo.schedules import Schedule, cosine_schedule, linear_schedule, make_schedule
from zoo.solvers import SOLVERS

__all__ = [
    "build",
    "available",
    "parameter_count",
    "register",
    "append_time_channel",
    "ConvConfig",
    "ResidualConfig",
    "UNetConfig",
    "DiffusersUNetConfig",
    "DenoiserConfig",
    "diffusion",
    "images",
    "schedules",
    "solvers",
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
    "euler_ancestral_step",
    "unipc_step",
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
    "ConvConfig": "zoo.configs",
    "ResidualConfig": "zoo.configs",
    "UNetConfig": "zoo.configs",
    "DiffusersUNetConfig": "zoo.configs",
    "DenoiserConfig": "zoo.configs",
    "ddim_sample": "zoo.samplers",
    "dpmpp_2m_sample": "zoo.samplers",
    "sample": "zoo.samplers",
}
# Submodules loaded on first use, so that ``zoo.train.train(...)`` works after a plain ``import zoo``.
_LAZY_MODULES = {
    **{name: f"zoo.{name}" for name in ("models", "registry", "samplers", "weights", "allocator", "files", "resources",
                                         "validate", "training", "diffusers_unet")},
    **{name: f"zoo.training.{name}" for name in ("train", "data", "metrics")},
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")

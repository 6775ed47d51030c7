"""The model registry: a name -> model-class dict, ``@register``, ``build`` and ``available``.

Modelled on torchvision's ``models/_api.py`` and timm's ``_registry.py``: a plain dict, loud on
duplicates and unknown names, with every model rebuilt from its name and config dataclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

import torch

from zoo.diffusers_model import DiffusersUNet
from zoo.models import ConvDenoiser, ResidualDenoiser, UNetDenoiser
from zoo.resources import check_fits

__all__ = ["register", "build", "available", "parameter_count", "config_fields"]

_MODELS: dict[str, type[torch.nn.Module]] = {}

M = TypeVar("M", bound=type[torch.nn.Module])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: register a model under ``name``.

    The class must have a ``config_class`` (a frozen dataclass) and take one instance of it in
    ``__init__``. The decorator stores ``name`` on the class as ``cls.name``.
    """

    def wrap(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered (by {_MODELS[name].__qualname__})")
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__qualname__} needs a dataclass `config_class` to be registered")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return wrap


# The built-in models: the registry imports the models, never the other way round.
for _cls in (ConvDenoiser, ResidualDenoiser, UNetDenoiser, DiffusersUNet):
    register(_cls.name)(_cls)


def available() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def build(name: str, **config: Any) -> torch.nn.Module:
    """Build a registered model: ``build("residual", hidden=64)``.

    Raises:
        ValueError: unknown ``name`` (the message lists ``available()``), or an invalid value.
        TypeError: an unknown config key (the message lists the accepted keys).
    """
    cls, cfg = _config(name, config)
    n = _count(cls, cfg)
    check_fits(4 * n, f"model {name!r} ({n:,} float32 parameters)", "choose a smaller width (hidden)")
    return cls(cfg)


def parameter_count(name: str, **config: Any) -> int:
    """The number of parameters ``build(name, **config)`` would allocate, counted without allocating them."""
    return _count(*_config(name, config))


def config_fields(name: str) -> list[str]:
    """The config keys of a registered model (``ValueError`` naming ``available()`` for an unknown name)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}: available models are {available()}")
    return [f.name for f in dataclasses.fields(_MODELS[name].config_class)]


def _config(name: str, config: dict[str, Any]):
    accepted = config_fields(name)
    cls = _MODELS[name]
    unknown = sorted(set(config) - set(accepted))
    if "num_classes" in unknown and config["num_classes"]:
        conditional = sorted(n for n, c in _MODELS.items() if "num_classes" in {f.name for f in dataclasses.fields(c.config_class)})
        raise ValueError(f"the {name!r} model is unconditional, as the seed specifies it: num_classes={config['num_classes']!r} "
                         f"needs a class-conditional model ({', '.join(repr(n) for n in conditional)})")
    if unknown:
        raise TypeError(f"unknown config key(s) {unknown} for model {name!r}: accepted keys are {accepted}")
    return cls, cls.config_class(**config)


def _count(cls, cfg) -> int:
    with torch.device("meta"):  # shapes only: a 57 GB model is counted in microseconds, not allocated
        return sum(p.numel() for p in cls(cfg).parameters())

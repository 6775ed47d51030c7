"""The models' configs: one frozen dataclass per registered model, every default in one place (torch-free).

``zoo.models`` builds the networks from them; the CLI reads its defaults from them; a manifest or
checkpoint stores one as a dict and ``zoo.build(name, **config)`` rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from zoo.schedules import MAX_TRAIN_TIMESTEPS

__all__ = ["DenoiserConfig", "ConvConfig", "ResidualConfig", "UNetConfig", "MAX_BLOCKS", "MAX_CLASSES"]

MAX_BLOCKS = 64  # residual blocks per U-Net level: far past any useful depth, and counted in milliseconds
MAX_CLASSES = 10_000  # a class count beyond this is a corrupt label file, not a data set


@dataclass(frozen=True)
class DenoiserConfig:
    """Fields every zoo denoiser has; validated on construction."""

    channels: int = 3  # data channels C (3 for RGB, 1 for grayscale)
    hidden: int = 64  # feature channels of every hidden conv
    kernel_size: int = 3  # odd, "same" padding keeps H x W
    num_train_timesteps: int = 1000  # T of the schedule; the time channel holds t / T

    _may_be_zero = ()  # fields where 0 means "none" (a ClassVar: not a config field)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v, low = getattr(self, f.name), 0 if f.name in self._may_be_zero else 1
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{f.name}={v!r} is invalid: expected an integer >= {low}")
            object.__setattr__(self, f.name, int(v))  # numpy integers are accepted, stored as int (JSON, hashing)
        if self.num_train_timesteps > MAX_TRAIN_TIMESTEPS:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} is invalid: expected at most "
                             f"{MAX_TRAIN_TIMESTEPS:,} (zoo.schedules.MAX_TRAIN_TIMESTEPS)")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size!r} is invalid: expected an odd integer (1, 3, 5, ...)")


@dataclass(frozen=True)
class ConvConfig(DenoiserConfig):
    """Config of the ``"conv"`` model (the shared fields only)."""


@dataclass(frozen=True)
class ResidualConfig(DenoiserConfig):
    """Config of the ``"residual"`` model (the shared fields only)."""


@dataclass(frozen=True)
class UNetConfig(DenoiserConfig):
    """Config of the ``"unet"`` model; ``hidden`` is the width at full resolution."""

    levels: int = 2  # resolutions: 1 = no downsampling, 2 = H and H/2, 3 = H, H/2, H/4
    blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    groups: int = 4  # GroupNorm groups; must divide hidden (and so 2 * hidden)
    num_classes: int = 0  # K > 0: class-conditional, classes 0..K-1 and the null class K; 0: unconditional

    _may_be_zero = ("num_classes",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.levels <= 4:
            raise ValueError(f"levels={self.levels!r} is invalid: expected 1, 2, 3 or 4")
        if self.blocks > MAX_BLOCKS:
            raise ValueError(f"blocks={self.blocks} is invalid: expected at most {MAX_BLOCKS} residual blocks per level")
        if self.num_classes > MAX_CLASSES:
            raise ValueError(f"num_classes={self.num_classes} is invalid: expected at most {MAX_CLASSES:,}")
        if self.hidden % self.groups:
            raise ValueError(f"groups={self.groups!r} must divide hidden={self.hidden!r} (GroupNorm)")

"""The zoo's epsilon-predicting denoisers and the time-channel helper they share.

Both are same-resolution conv nets in the spirit of the DDPM baseline (Ho et al. 2020) reduced to
their core: the timestep enters as one extra constant input channel, t / T, instead of an embedding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from zoo.registry import register

__all__ = ["DenoiserConfig", "ConvConfig", "ResidualConfig", "ConvDenoiser", "ResidualDenoiser", "append_time_channel"]


@dataclass(frozen=True)
class DenoiserConfig:
    """Fields every zoo denoiser has; validated on construction."""

    channels: int = 3  # data channels C (3 for RGB, 1 for grayscale)
    hidden: int = 64  # feature channels of every hidden conv
    kernel_size: int = 3  # odd, "same" padding keeps H x W
    num_train_timesteps: int = 1000  # T of the schedule; the time channel holds t / T

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f.name}={v!r} is invalid: expected an integer >= 1")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size!r} is invalid: expected an odd integer (1, 3, 5, ...)")


@dataclass(frozen=True)
class ConvConfig(DenoiserConfig):
    """Config of the ``"conv"`` model (the shared fields only)."""


@dataclass(frozen=True)
class ResidualConfig(DenoiserConfig):
    """Config of the ``"residual"`` model (the shared fields only)."""


def append_time_channel(x: torch.Tensor, t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Append a constant channel holding ``t / num_train_timesteps`` to x.

    Args:
        x: (B, C, H, W) float.
        t: (B,) integer or float timesteps.

    Returns:
        (B, C+1, H, W). Built by broadcasting, not from Python ints, so traced and exported
        graphs keep B, H and W dynamic.
    """
    tc = (t.to(x.dtype) / num_train_timesteps).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return torch.cat([x, torch.zeros_like(x[:, :1]) + tc], dim=1)  # (B, C+1, H, W)


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _Denoiser(nn.Module):
    name: str  # set by @register
    config_class: type[DenoiserConfig]

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


@register("conv")
class ConvDenoiser(_Denoiser):
    """conv -> relu -> conv -> relu -> conv -> relu -> conv: (C+1) -> hidden -> hidden -> hidden -> C."""

    config_class = ConvConfig

    def __init__(self, config: ConvConfig) -> None:
        super().__init__(config)
        c, h, k = config.channels, config.hidden, config.kernel_size
        self.net = nn.Sequential(
            _conv(c + 1, h, k), nn.ReLU(), _conv(h, h, k), nn.ReLU(), _conv(h, h, k), nn.ReLU(), _conv(h, c, k)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(append_time_channel(x, t, self.config.num_train_timesteps))  # (B, C, H, W)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), hidden x H x W -> hidden x H x W."""

    def __init__(self, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = _conv(hidden, hidden, kernel_size)
        self.conv2 = _conv(hidden, hidden, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


@register("residual")
class ResidualDenoiser(_Denoiser):
    """stem conv -> relu -> block -> relu -> block -> relu -> output conv, same resolution throughout."""

    config_class = ResidualConfig

    def __init__(self, config: ResidualConfig) -> None:
        super().__init__(config)
        c, h, k = config.channels, config.hidden, config.kernel_size
        self.stem = _conv(c + 1, h, k)
        self.block1 = ResidualBlock(h, k)
        self.block2 = ResidualBlock(h, k)
        self.out = _conv(h, c, k)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(append_time_channel(x, t, self.config.num_train_timesteps)))  # (B, hidden, H, W)
        h = torch.relu(self.block1(h))
        h = torch.relu(self.block2(h))
        return self.out(h)  # (B, C, H, W)

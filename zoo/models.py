"""The zoo's epsilon-predicting denoisers: the seed's two conv nets and a small U-Net.

``conv`` and ``residual`` are same-resolution conv nets in the spirit of the DDPM baseline (Ho et
al. 2020) reduced to their core: the timestep enters as one extra constant input channel, t / T.
``unet`` is the DDPM / improved-diffusion U-Net at small scale (sinusoidal time embedding in every
residual block, GroupNorm, skip concatenation), the model that reaches the data's quality.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.conditioning import Conditions, class_labels
from zoo.configs import ConvConfig, DenoiserConfig, ResidualConfig, UNetConfig

__all__ = [
    "DenoiserConfig", "ConvConfig", "ResidualConfig", "UNetConfig", "ConvDenoiser", "ResidualDenoiser", "UNetDenoiser",
    "append_time_channel", "timestep_embedding", "model_labels",
]


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


def check_timesteps(t: torch.Tensor, num_train_timesteps: int) -> None:
    """Refuse timesteps outside 0..T-1 in eager calls (a model trained on them says nothing useful elsewhere).

    Skipped while tracing, scripting, compiling or exporting: the check reads values, which a
    graph must not depend on, and the exported samplers only feed the schedule's own timesteps.
    Checked for timesteps on the CPU only: reading them back from a GPU is a device sync per call,
    measured at ~10% of eager CUDA sampling on an H200 (docs/BENCHMARKS.md).
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a (B,) tensor of timesteps, got {type(t).__name__}")
    if t.device.type == "cpu" and t.numel() and bool(((t < 0) | (t > num_train_timesteps - 1)).any()):
        raise ValueError(f"timesteps {t.min().item()}..{t.max().item()} are out of range: this model was built for "
                         f"t in 0..{num_train_timesteps - 1} (num_train_timesteps={num_train_timesteps})")


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Refuse labels outside 0..num_classes (num_classes: the null class) in eager calls; skipped while exporting."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        raise TypeError(f"labels must be a (B,) int64 tensor; got {type(labels).__name__} "
                        f"{getattr(labels, 'dtype', '')} {tuple(getattr(labels, 'shape', ()))}")
    if labels.device.type == "cpu" and labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) <= num_classes:
        raise ValueError(f"labels {labels.tolist()[:8]} are invalid: expected classes 0..{num_classes - 1}, or "
                         f"{num_classes} for the null class")


def model_labels(labels: torch.Tensor | None, t: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The labels a model's forward conditions on: a conditional model (K = ``num_classes`` > 0) without labels
    predicts for the null class K; labels are checked (``check_labels``); an unconditional model refuses them."""
    if num_classes:
        if labels is None:
            labels = torch.full_like(t, num_classes)
        check_labels(labels, num_classes)
        return labels
    if labels is not None:
        raise ValueError("labels were given to an unconditional model (num_classes=0): build it with num_classes=K")
    return None


class _Denoiser(nn.Module):
    name: str  # the registry name (zoo.registry registers each built-in model under it)
    config_class: type[DenoiserConfig]
    # Whether export's int8 path (inner convolutions quantized, export/quantize.py) applies.
    supports_int8: bool = True

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

    @property
    def conditioning(self) -> Conditions | None:
        """What the model is conditioned on (``zoo.conditioning``): class labels for num_classes K > 0, else None."""
        return class_labels(getattr(self.config, "num_classes", 0))


class ConvDenoiser(_Denoiser):
    """conv -> relu -> conv -> relu -> conv -> relu -> conv: (C+1) -> hidden -> hidden -> hidden -> C."""

    name = "conv"
    config_class = ConvConfig

    def __init__(self, config: ConvConfig) -> None:
        super().__init__(config)
        c, h, k = config.channels, config.hidden, config.kernel_size
        self.net = nn.Sequential(
            _conv(c + 1, h, k), nn.ReLU(), _conv(h, h, k), nn.ReLU(), _conv(h, h, k), nn.ReLU(), _conv(h, c, k)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_timesteps(t, self.config.num_train_timesteps)
        return self.net(append_time_channel(x, t, self.config.num_train_timesteps))  # (B, C, H, W)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), hidden x H x W -> hidden x H x W."""

    def __init__(self, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = _conv(hidden, hidden, kernel_size)
        self.conv2 = _conv(hidden, hidden, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class ResidualDenoiser(_Denoiser):
    """stem conv -> relu -> block -> relu -> block -> relu -> output conv, same resolution throughout."""

    name = "residual"
    config_class = ResidualConfig

    def __init__(self, config: ResidualConfig) -> None:
        super().__init__(config)
        c, h, k = config.channels, config.hidden, config.kernel_size
        self.stem = _conv(c + 1, h, k)
        self.block1 = ResidualBlock(h, k)
        self.block2 = ResidualBlock(h, k)
        self.out = _conv(h, c, k)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_timesteps(t, self.config.num_train_timesteps)
        h = torch.relu(self.stem(append_time_channel(x, t, self.config.num_train_timesteps)))  # (B, hidden, H, W)
        h = torch.relu(self.block1(h))
        h = torch.relu(self.block2(h))
        return self.out(h)  # (B, C, H, W)


# --- unet --------------------------------------------------------------------------------------


def timestep_embedding(
    t: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32, max_period: float = 10_000.0
) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, as in DDPM): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t.to(dtype)[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2 * half)


class TimeResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time embedding per channel, GroupNorm -> SiLU -> conv, + skip (DDPM's ResnetBlock)."""

    def __init__(self, cin: int, cout: int, tdim: int, groups: int, kernel_size: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = _conv(cin, cout, kernel_size)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = _conv(cout, cout, kernel_size)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNetDenoiser(_Denoiser):
    """A small DDPM-style U-Net: sinusoidal time embedding in every residual block, GroupNorm,
    stride-2 downsampling, nearest upsampling and skip concatenation (Ho et al. 2020, sec. 4;
    improved-diffusion's ``unet.py`` without attention). Widths: hidden at full resolution,
    2 * hidden below. Any H x W works: odd sizes round up on the way down and the upsampling
    returns to each skip's exact size.
    """

    name = "unet"
    config_class = UNetConfig
    supports_int8 = False
    int8_note = ("its GroupNorm layers sit between the convolutions, so per-tensor uint8 activations lose the "
                 "normalised signal (measured 10% per-step error, and a diverging loop, on a random init)")

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        c, h, k, g = config.channels, config.hidden, config.kernel_size, config.groups
        tdim = 4 * h
        self.time_mlp = nn.Sequential(nn.Linear(h, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        widths = [h] + [2 * h] * (config.levels - 1)  # channels per level
        self.stem = _conv(c, h, k)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [h]
        cur = h
        for level, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks):
                blocks.append(TimeResBlock(cur, w, tdim, g, k))
                cur = w
                skips.append(cur)
            self.down.append(blocks)
            if level + 1 < len(widths):
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = TimeResBlock(cur, cur, tdim, g, k)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks + 1):
                blocks.append(TimeResBlock(cur + skips.pop(), w, tdim, g, k))
                cur = w
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(_conv(cur, cur, k))
        self.out_norm = nn.GroupNorm(g, cur)
        self.out = _conv(cur, c, k)
        if config.num_classes:  # made last: an unconditional U-Net draws exactly the weights it always did
            self.class_emb = nn.Embedding(config.num_classes + 1, tdim)  # row K: the null class (classifier-free guidance)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """eps for (x, t) and, for a class-conditional model, ``labels`` (B,) int64 in 0..K (K: the null class).

        A conditional model without labels predicts for the null class; labels for an unconditional
        model are refused.
        """
        check_timesteps(t, self.config.num_train_timesteps)
        temb = self.time_mlp(timestep_embedding(t, self.config.hidden, x.dtype))  # (B, 4 * hidden)
        labels = model_labels(labels, t, self.config.num_classes)
        if labels is not None:
            temb = temb + self.class_emb(labels)  # (B, 4 * hidden): the class added to the time embedding
        h = self.stem(x)  # (B, hidden, H, W)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, temb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)  # (B, w, ceil(H/2), ceil(W/2))
                skips.append(h)
        h = self.mid(h, temb)
        for level, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if level < len(self.upsample):
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")  # back to the skip's H x W
                h = self.upsample[level](h)
        return self.out(F.silu(self.out_norm(h)))  # (B, C, H, W)

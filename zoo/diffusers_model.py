"""A diffusers ``UNet2DModel`` under the zoo's model interface: the ``"diffusers_unet"`` registry entry.

diffusers is imported on first build (the ``diffusers`` extra); without it, building this entry is
one ``ModuleNotFoundError`` naming the extra. Folders are read and written in ``zoo.diffusers_unet``,
scheduler configs mapped in ``zoo.diffusers_schedulers``.
"""

from __future__ import annotations

import inspect

import torch

from zoo.configs import DiffusersUNetConfig
from zoo.models import _Denoiser, check_timesteps, model_labels
from zoo.validate import first_line, install_hint

__all__ = ["DiffusersUNet", "EXTRA", "DDPM_CIFAR10"]

EXTRA = f"diffusers is not installed: {install_hint('diffusers')}, or pip install diffusers"

# The DDPM CIFAR-10 architecture (Ho et al. 2020; google/ddpm-cifar10-32's config.json): 35,746,307 parameters,
# self-attention at 16x16, 32x32 RGB. The full-size benchmark and slow test build it with a random init.
DDPM_CIFAR10 = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 32, "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "attention_head_dim": None,
}


def _unet_class():
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ModuleNotFoundError(EXTRA, name="diffusers") from None
    return UNet2DModel


class DiffusersUNet(_Denoiser):
    """``forward(x, t[, labels]) -> eps``: a diffusers ``UNet2DModel`` (``self.unet``) under the zoo's model interface.

    ``labels`` are class indices 0..K (K: the null class) for a class-conditional unet
    (``num_class_embeds = K + 1``); a conditional model without labels predicts for the null class.
    """

    name = "diffusers_unet"
    config_class = DiffusersUNetConfig
    supports_int8 = False
    int8_note = "its GroupNorm layers and attention sit between the convolutions (as for 'unet')"

    def __init__(self, config: DiffusersUNetConfig) -> None:
        super().__init__(config)
        cls = _unet_class()
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(config.unet) - accepted)
        if unknown:
            raise ValueError(f"unknown UNet2DModel config key(s) {unknown} for diffusers "
                             f"{_diffusers_version()}: accepted are {sorted(accepted)}")
        try:
            self.unet = cls(**config.unet)
        except (TypeError, ValueError, AssertionError, AttributeError, KeyError) as e:
            raise ValueError(f"the UNet2DModel config is invalid: {first_line(e, 300)}") from None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_timesteps(t, self.config.num_train_timesteps)
        labels = model_labels(labels, t, self.config.num_classes)
        return self.unet(x, t, class_labels=labels, return_dict=False)[0]  # (B, C, H, W)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__

"""The models' configs: one frozen dataclass per registered model, every default in one place (torch-free).

``zoo.models`` builds the networks from them; the CLI reads its defaults from them; a manifest or
checkpoint stores one as a dict and ``zoo.build(name, **config)`` rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from typing import Any

from zoo.schedules import MAX_TRAIN_TIMESTEPS

__all__ = ["DenoiserConfig", "ConvConfig", "ResidualConfig", "UNetConfig", "DiffusersUNetConfig", "MAX_BLOCKS", "MAX_CLASSES"]

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


# diffusers' UNet2DModel options that make it something other than an epsilon predictor of (x, integer t[, class]):
# "fourier" takes log(t) (t = 0 is -inf); the other class embeddings take float vectors, not class indices.
_UNET_REFUSED = {
    "time_embedding_type": ("positional", "learned"),
    "class_embed_type": (None,),
}


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclass(frozen=True)
class DiffusersUNetConfig:
    """Config of the ``"diffusers_unet"`` model: a diffusers ``UNet2DModel`` config, plus what diffzoo reads of it.

    ``unet`` is the UNet2DModel config (a ``config.json``'s keys; ``_``-prefixed metadata dropped),
    stored normalised (JSON types, ``in_channels``/``out_channels``/``num_class_embeds`` agreeing with
    the fields below), so that a manifest or checkpoint rebuilds it with ``zoo.build``.

    Fields:
        channels: data channels; 0 = the unet's ``in_channels`` (3 if unset). Given, it sets
            ``in_channels`` and ``out_channels`` (training on data with other channels).
        num_classes: K > 0: class-conditional with classes 0..K-1 and the null class K, i.e.
            ``num_class_embeds = K + 1`` (diffzoo's convention: the last embedding is the null class);
            None = read from the unet's ``num_class_embeds``; 0 = unconditional.
        num_train_timesteps: T of the schedule (a diffusers scheduler config's).
    """

    unet: dict = field(default_factory=dict)
    channels: int = 0
    num_classes: int | None = None
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.unet, dict):
            raise ValueError(f"unet={self.unet!r} is invalid: expected a UNet2DModel config (a dict, as in config.json)")
        try:  # JSON types: tuples become lists, so that a manifest's copy compares equal
            unet = json.loads(json.dumps({k: v for k, v in self.unet.items() if not k.startswith("_")}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"the unet config is not JSON-serialisable: {e}") from None
        cls = self.unet.get("_class_name", "UNet2DModel")
        if cls != "UNet2DModel":
            raise ValueError(f"_class_name={cls!r} is not supported: expected a diffusers 'UNet2DModel' config")
        for key, accepted in _UNET_REFUSED.items():
            if unet.get(key, accepted[0]) not in accepted:
                raise ValueError(f"{key}={unet[key]!r} is not supported: expected one of {list(accepted)} (diffzoo feeds "
                                 "integer timesteps and class indices)")
        for name, low in (("channels", 0), ("num_train_timesteps", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{name}={v!r} is invalid: expected an integer >= {low}")
            object.__setattr__(self, name, int(v))
        if self.num_train_timesteps > MAX_TRAIN_TIMESTEPS:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} is invalid: expected at most {MAX_TRAIN_TIMESTEPS:,}")
        c = self.channels or unet.get("in_channels", 3)
        if self.channels == 0 and unet.get("out_channels", c) != c:
            raise ValueError(f"in_channels={c} and out_channels={unet['out_channels']} differ: an epsilon predictor "
                             "returns the shape it is given")
        unet["in_channels"] = unet["out_channels"] = c
        size = unet.get("sample_size")
        if size is not None and not (_positive_int(size) or (isinstance(size, list) and len(size) == 2
                                                             and all(map(_positive_int, size)))):
            raise ValueError(f"sample_size={size!r} is invalid: expected an integer >= 1, or [height, width]")
        if unet.get("time_embedding_type") == "learned" and unet.get("num_train_timesteps") != self.num_train_timesteps:
            raise ValueError(f"num_train_timesteps={unet.get('num_train_timesteps')!r} (the learned time embedding's size) "
                             f"differs from the schedule's T={self.num_train_timesteps}: every timestep 0..T-1 needs its "
                             "embedding")
        embeds = unet.get("num_class_embeds")
        k = self.num_classes
        if k is None:
            if embeds is not None and (isinstance(embeds, bool) or not isinstance(embeds, int) or embeds < 2):
                raise ValueError(f"num_class_embeds={embeds!r} is invalid: expected K + 1 >= 2 (K classes and the null class)")
            k = embeds - 1 if embeds else 0
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= MAX_CLASSES:
            raise ValueError(f"num_classes={k!r} is invalid: expected an integer in 0..{MAX_CLASSES:,}")
        unet["num_class_embeds"] = int(k) + 1 if k else None
        object.__setattr__(self, "channels", int(c))
        object.__setattr__(self, "num_classes", int(k))
        object.__setattr__(self, "unet", unet)

    @property
    def sample_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the unet's ``sample_size`` (an int or [H, W]); None when the config does not say."""
        size = self.unet.get("sample_size")
        if size is None:
            return None
        h, w = (size, size) if isinstance(size, int) else size
        return self.channels, int(h), int(w)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: every down block but the last halves them."""
        return 2 ** max(0, len(self.unet.get("down_block_types", [0] * 4)) - 1)

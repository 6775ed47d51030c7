"""A training run's settings: ``TrainConfig``, every default in one place (torch-free: the CLI reads its flags' defaults here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from zoo.validate import check_int, check_real

__all__ = ["TrainConfig", "LR_SCHEDULES", "DEVICES", "MAX_SEED"]

LR_SCHEDULES = ("constant", "cosine")
MAX_SEED = 2**32 - 1
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "residual"  # registry name
    model_config: dict = field(default_factory=dict)  # e.g. {"hidden": 64}; channels is set from the data
    data: str = "synthetic"  # a data spec: synthetic | digits | idx:PATH | cifar10:PATH | folder:PATH
    size: int = 32  # image height and width
    steps: int = 2000  # optimizer steps in total (a resumed run continues up to here)
    batch: int = 64  # global batch (split across torchrun ranks)
    lr: float = 2e-4  # peak learning rate
    lr_schedule: str = "cosine"  # constant | cosine (linear warm-up over 2% of steps, cosine decay to 10%)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # reached after a warm-up of min(decay, (1+n)/(10+n))
    schedule: str = "linear"  # linear | cosine
    schedule_params: dict = field(default_factory=dict)  # e.g. {"beta_end": 0.01}; T comes from the model
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 0  # steps between EMA sample grids; 0 = only at the end
    sample_steps: int = 20  # DDIM steps for those grids
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda
    conditional: bool = False  # class-conditional: the model's num_classes from the data's labels (unet)
    cond_drop: float = 0.1  # conditional runs: each label replaced by the null class with this probability

    def __post_init__(self) -> None:
        # numpy scalars are welcome and stored as Python numbers (the config is written as JSON)
        for name, low in (("size", 1), ("steps", 1), ("batch", 1), ("checkpoint_every", 1), ("sample_steps", 1),
                          ("log_every", 1), ("sample_every", 0)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low))
        # every step's generator is seeded by seed * 1_000_003 + step, which must fit torch's 64-bit seed
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0, MAX_SEED))
        for name, low, open_low in (("lr", 0.0, True), ("weight_decay", 0.0, False), ("grad_clip", 0.0, True),
                                    ("ema_decay", 0.0, False)):
            object.__setattr__(self, name, check_real(name, getattr(self, name), low, open_low=open_low))
        object.__setattr__(self, "cond_drop", check_real("cond_drop", self.cond_drop, 0.0, 1.0))
        if not isinstance(self.conditional, bool):
            raise ValueError(f"conditional={self.conditional!r} is invalid: expected True or False")
        if not self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay!r} is invalid: expected 0 <= ema_decay < 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} is invalid: expected one of {list(LR_SCHEDULES)}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r} is invalid: expected one of {list(DEVICES)}")

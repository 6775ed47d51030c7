"""``diffzoo train``: train a model on a data source (data-parallel under torchrun)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from runtime.apps.commands.common import model_args, positive_int


def _model_config(s: str) -> dict:
    """``levels=2,blocks=1`` -> {"levels": 2, "blocks": 1} (integer config fields), or a JSON config file or
    diffusers folder (its config.json) -> {FILE: the JSON object}, resolved against the model in ``run``."""
    path = Path(s)
    if "=" not in s and (path.is_file() or path.is_dir()):
        from zoo.diffusers_unet import CONFIG_NAME, read_config

        file = path / CONFIG_NAME if path.is_dir() else path
        try:
            return {_FILE: (str(file), read_config(file))}
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    out = {}
    for item in filter(None, (i.strip() for i in s.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE (e.g. levels=2,blocks=1) nor an existing JSON "
                                             "file or diffusers folder")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not an integer") from None
    return out


_FILE = "<file>"  # the key of a --model-config read from a file


def _resolve_model_config(args: argparse.Namespace) -> dict:
    """The model config the flags ask for: --hidden/--kernel-size where the model has them, then --model-config.

    A JSON file is the model's config; for a model whose config wraps another library's (``diffusers_unet``'s
    ``unet``), a file without that key is that inner config (a diffusers ``config.json``).
    """
    from zoo.configs import DenoiserConfig as D
    from zoo.registry import config_fields

    fields = config_fields(args.model)
    out = {}
    for key, flag in (("hidden", "--hidden"), ("kernel_size", "--kernel-size")):
        value = getattr(args, key)
        if key in fields:
            out[key] = value
        elif value != getattr(D, key):
            raise ValueError(f"{flag} {value} does not apply to the {args.model!r} model: its config keys are {fields}")
    given = dict(args.model_config)
    if _FILE in given:
        file, data = given.pop(_FILE)
        if "unet" in fields and "unet" not in data:
            data = {"unet": data}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{file!r}: unknown config key(s) {unknown} for the {args.model!r} model: accepted are {fields}")
        given.update(data)
    return {**out, **given}


def register(sub) -> None:
    from zoo.training.config import DEVICES
    from zoo.training.config import TrainConfig as T

    p = sub.add_parser("train", help="train a model (data-parallel under torchrun)")
    model_args(p, channels_from_data=True)
    p.add_argument("--model-config", type=_model_config, default={},
                   help="other integer config fields of the model, e.g. levels=2,blocks=1 for unet; or a JSON config "
                        "file: for diffusers_unet, a diffusers UNet2DModel config.json or its folder (the architecture)")
    p.add_argument("--data", default=T.data, help=f"a data source (zoo.data.DATA_SOURCES: digits, idx:PATH, ...; default {T.data})")
    p.add_argument("--steps", type=positive_int, default=T.steps, help=f"total optimizer steps (default {T.steps})")
    p.add_argument("--batch", type=positive_int, default=T.batch, help=f"global batch size (default {T.batch})")
    p.add_argument("--lr", type=float, default=T.lr, help=f"AdamW peak learning rate (default {T.lr:g}; {T.lr_schedule} decay)")
    p.add_argument("--weight-decay", type=float, default=T.weight_decay, help=f"AdamW weight decay (default {T.weight_decay:g})")
    p.add_argument("--grad-clip", type=float, default=T.grad_clip, help=f"max gradient norm (default {T.grad_clip:g})")
    p.add_argument("--ema-decay", type=float, default=T.ema_decay,
                   help=f"decay of the EMA weights that are saved (default {T.ema_decay})")
    p.add_argument("--seed", type=int, default=T.seed, help=f"seed of the init and every step's draws (default {T.seed})")
    p.add_argument("--checkpoint-every", type=positive_int, default=T.checkpoint_every,
                   help=f"steps between checkpoints (default {T.checkpoint_every})")
    p.add_argument("--sample-every", type=int, default=T.sample_every, help="steps between EMA sample grids (0: at the end only)")
    p.add_argument("--conditional", action="store_true",
                   help="class-conditional (unet): classes from the data's labels, kept with the run")
    p.add_argument("--cond-drop", type=float, default=T.cond_drop,
                   help=f"with --conditional: probability of training a label as the null class (default {T.cond_drop})")
    p.add_argument("--device", choices=DEVICES, default=T.device, help=f"{T.device} (default): CUDA if torch sees it")
    p.add_argument("--out", required=True, help="run directory (checkpoints, samples, log)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run's last checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zoo.training.config import TrainConfig
    from zoo.training.train import train

    channels = {} if args.channels is None else {"channels": args.channels}  # the data decides; a mismatch is refused
    cfg = TrainConfig(
        model=args.model, model_config={**_resolve_model_config(args), **channels},
        data=args.data, size=args.size, steps=args.steps, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, schedule=args.schedule, seed=args.seed,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, device=args.device,
        conditional=args.conditional, cond_drop=args.cond_drop,
    )
    r = train(cfg, args.out, resume=args.resume, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:
        loss = f"{r.losses[-1][1]:.4f}" if r.losses else "-"
        print(f"trained {cfg.model} to step {r.step} on {cfg.data} ({r.world_size} process(es)): final loss {loss}, "
              f"{r.images_per_second:.0f} img/s, {r.seconds:.1f} s")
        print(f"checkpoint: {r.checkpoint}")
        print(f"export it:  diffzoo export --checkpoint {args.out} --out bundles/{Path(args.out).name}")
    return 0

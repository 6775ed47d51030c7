"""``diffzoo train``: train a model on a data source (data-parallel under torchrun)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from runtime.apps.commands.common import model_args, positive_int


def _model_config(s: str) -> dict:
    """``levels=2,blocks=1`` -> {"levels": 2, "blocks": 1} (integer config fields)."""
    out = {}
    for item in filter(None, (i.strip() for i in s.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE (e.g. levels=2,blocks=1)")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not an integer") from None
    return out


def register(sub) -> None:
    from zoo.training.config import DEVICES
    from zoo.training.config import TrainConfig as T

    p = sub.add_parser("train", help="train a model (data-parallel under torchrun)")
    model_args(p, channels_from_data=True)
    p.add_argument("--model-config", type=_model_config, default={},
                   help="other integer config fields of the model, e.g. levels=2,blocks=1 for unet")
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
        model=args.model, model_config={"hidden": args.hidden, "kernel_size": args.kernel_size, **channels, **args.model_config},
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

"""``diffzoo train``: train a model on a data source (data-parallel under torchrun)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from runtime.commands.common import model_args, positive_int


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
    p = sub.add_parser("train", help="train a model (data-parallel under torchrun)")
    model_args(p, channels_from_data=True)
    p.add_argument("--kernel-size", type=positive_int, default=3, help="odd conv kernel size (default 3)")
    p.add_argument("--model-config", type=_model_config, default={},
                   help="other integer config fields of the model, e.g. levels=2,blocks=1 for unet")
    p.add_argument("--data", default="synthetic", help="synthetic (default) | digits | idx:PATH | cifar10:PATH | folder:PATH")
    p.add_argument("--steps", type=positive_int, default=2000, help="total optimizer steps (default 2000)")
    p.add_argument("--batch", type=positive_int, default=64, help="global batch size (default 64)")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW peak learning rate (default 2e-4; cosine decay)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (default 1)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of the EMA weights that are saved (default 0.999)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and every step's draws (default 0)")
    p.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--sample-every", type=int, default=0, help="steps between EMA sample grids (0: at the end only)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto (default): CUDA if torch sees it")
    p.add_argument("--out", required=True, help="run directory (checkpoints, samples, log)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run's last checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zoo.train import TrainConfig, train

    channels = {} if args.channels is None else {"channels": args.channels}  # the data decides; a mismatch is refused
    cfg = TrainConfig(
        model=args.model, model_config={"hidden": args.hidden, "kernel_size": args.kernel_size, **channels, **args.model_config},
        data=args.data, size=args.size, steps=args.steps, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, schedule=args.schedule, seed=args.seed,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, device=args.device,
    )
    r = train(cfg, args.out, resume=args.resume, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:
        loss = f"{r.losses[-1][1]:.4f}" if r.losses else "-"
        print(f"trained {cfg.model} to step {r.step} on {cfg.data} ({r.world_size} process(es)): final loss {loss}, "
              f"{r.images_per_second:.0f} img/s, {r.seconds:.1f} s")
        print(f"checkpoint: {r.checkpoint}")
        print(f"export it:  diffzoo export --checkpoint {args.out} --out bundles/{Path(args.out).name}")
    return 0

"""``diffzoo eager-sample``: build a model and sample a few images with the eager torch sampler."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from runtime.apps.commands.common import (
    check_out,
    eta,
    model_args,
    positive_int,
    solver_arg,
    write_images,
)


def register(sub) -> None:
    p = sub.add_parser("eager-sample", help="build a model and sample a few images with the eager torch sampler")
    model_args(p)
    p.add_argument("--n", type=positive_int, default=8, help="number of images (default 8)")
    p.add_argument("--steps", type=positive_int, default=20, help="solver steps (default 20)")
    solver_arg(p)
    p.add_argument("--eta", type=eta, default=0.0, help="0 = deterministic DDIM (default), 1 = DDPM-like")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init, x_T and the noise (default 0)")
    p.add_argument("--out", default="samples.png", help="output: .png grid, .ppm first image, .npy array (default samples.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import zoo

    out = Path(args.out)
    check_out(out, channels=args.channels)
    from zoo.resources import activation_bytes, check_fits

    check_fits(activation_bytes(args.n, args.channels, args.hidden, args.size, args.size),
               f"eager sampling of {args.n} images at {args.size}x{args.size}", "sample fewer images (--n) or a smaller --size")
    torch.manual_seed(args.seed)  # the random init, reproducible by seed
    model = zoo.build(args.model, hidden=args.hidden, channels=args.channels, kernel_size=args.kernel_size).eval()
    schedule = zoo.make_schedule(args.schedule, num_train_timesteps=model.config.num_train_timesteps)
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((args.n, args.channels, args.size, args.size), generator=g)
    t0 = time.perf_counter()
    x0 = zoo.sample(model, schedule, x_T, num_steps=args.steps, solver=args.solver, eta=args.eta, noise=g, progress=True)
    dt = time.perf_counter() - t0
    write_images(out, x0)
    print(f"{args.n} images from an untrained {args.model} (hidden={args.hidden}) in {dt:.2f} s -> {out}")
    return 0

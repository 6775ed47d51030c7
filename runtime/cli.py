"""The ``diffzoo`` command line: one subcommand per job, each importing only what it needs.

The only place in diffzoo that prints. User errors (ValueError, TypeError, OSError raised for bad
input) become one line on stderr and exit status 2; set DIFFZOO_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

EXIT_USER_ERROR = 2


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} is invalid: expected an integer >= 1")
    return v


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="residual", help="registry name (see `zoo.available()`); default: residual")
    p.add_argument("--hidden", type=_positive_int, default=64, help="hidden channels (default 64)")
    p.add_argument("--channels", type=_positive_int, default=3, help="data channels (default 3)")
    p.add_argument("--size", type=_positive_int, default=32, help="image height and width in pixels (default 32)")
    p.add_argument("--schedule", default="linear", help="noise schedule: linear or cosine (default linear)")


def _write_images(path: Path, x) -> None:
    """Write a batch by suffix: .ppm/.pgm the first image, .npy the raw array, else a PNG-style grid."""
    import numpy as np

    from zoo.files import atomic_write
    from zoo.images import save_grid, write_ppm

    suffix = path.suffix.lower()
    if suffix in (".ppm", ".pgm"):
        write_ppm(path, x)
    elif suffix == ".npy":
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(x, dtype=np.float32))
        atomic_write(path, buf.getvalue())
    else:
        save_grid(path, x)


def cmd_eager_sample(args: argparse.Namespace) -> int:
    import torch

    import zoo

    model = zoo.build(args.model or "residual", hidden=args.hidden, channels=args.channels).eval()
    schedule = zoo.make_schedule(args.schedule, num_train_timesteps=model.config.num_train_timesteps)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # random init, reproducible by seed
    x_T = torch.randn((args.n, args.channels, args.size, args.size), generator=g)
    t0 = time.perf_counter()
    x0 = zoo.ddim_sample(model, schedule, x_T, num_steps=args.steps, eta=args.eta, noise=g, progress=True)
    dt = time.perf_counter() - t0
    out = Path(args.out)
    _write_images(out, x0)
    print(f"{args.n} images from an untrained {args.model} (hidden={args.hidden}) in {dt:.2f} s -> {out}")
    return 0


def _load_or_build(args: argparse.Namespace):
    """(model, schedule, example_shape) from --checkpoint, or a seeded random init from --model."""
    import torch

    import zoo

    if args.checkpoint:
        from zoo.checkpoint import load_weights

        if args.model is not None:
            raise ValueError(f"--checkpoint {args.checkpoint} already names its model: drop --model {args.model}")
        model, schedule, meta = load_weights(args.checkpoint)
        shape = tuple(meta.get("data", {}).get("shape") or (model.config.channels, args.size, args.size))
        return model, schedule, shape
    torch.manual_seed(args.seed)
    model = zoo.build(args.model or "residual", hidden=args.hidden, channels=args.channels, kernel_size=args.kernel_size)
    schedule = zoo.make_schedule(args.schedule, num_train_timesteps=model.config.num_train_timesteps)
    return model, schedule, (args.channels, args.size, args.size)


def cmd_export(args: argparse.Namespace) -> int:
    import export

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    model, schedule, shape = _load_or_build(args)
    t0 = time.perf_counter()
    try:
        bundle = export.export_bundle(
            model, args.out, schedule=schedule, example_shape=shape, opset=args.opset, formats=formats,
            force=args.force, seed=args.seed, progress=True,
        )
    except export.ExportVerificationError as e:
        print(f"diffzoo export: error: {e} (nothing was written)", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    m = bundle.manifest
    print(f"exported {m['model']['name']} {m['model']['config']} ({m['schedule']['name']} schedule, data {shape})")
    print(f"{'artifact':<16}{'format':<13}{'seconds':>8}  {'max |diff|':>11}  {'atol':>7}  verified at")
    for c in bundle.checks:
        sizes = "x".join(str(c["shape"][k]) for k in ("batch", "height", "width"))
        steps = f", {c['shape']['steps']} steps" if "steps" in c["shape"] else ""
        print(f"{c['artifact']:<16}{c['format']:<13}{bundle.seconds[c['artifact']]:>8.2f}  "
              f"{c['max_abs_diff']:>11.2e}  {c['atol']:>7.0e}  B x H x W = {sizes}{steps}")
    print(f"bundle written to {bundle.path} in {total:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffzoo", description="Build, train, export and deploy small diffusion denoisers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eager-sample", help="build a model and sample a few images with the eager torch sampler")
    _model_args(p)
    p.add_argument("--n", type=_positive_int, default=8, help="number of images (default 8)")
    p.add_argument("--steps", type=_positive_int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--eta", type=float, default=0.0, help="0 = deterministic DDIM (default), 1 = DDPM-like")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="output: .png grid, .ppm first image, .npy array")
    p.set_defaults(func=cmd_eager_sample)

    from export.specs import FORMATS

    p = sub.add_parser("export", help="export a model to a verified TorchScript/ONNX bundle")
    _model_args(p)
    p.add_argument("--kernel-size", type=_positive_int, default=3, help="odd conv kernel size (default 3)")
    p.add_argument("--checkpoint", default=None, help="a weights .safetensors from `diffzoo train` (instead of --model)")
    p.add_argument("--out", required=True, help="bundle directory (absent or empty, unless --force)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (default 20)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out after the new bundle is verified")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and of the verification inputs")
    p.set_defaults(func=cmd_export, model=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, TypeError, OSError) as e:
        if os.environ.get("DIFFZOO_DEBUG"):
            raise
        print(f"diffzoo {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"diffzoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

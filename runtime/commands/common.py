"""What several commands share: argument types, the model and solver options, and writing images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".npy")


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} is invalid: expected an integer >= 1")
    return v


def eta(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{s!r} is invalid: expected 0 <= eta <= 1 (0 = DDIM, 1 = DDPM-like)")
    return v


def model_args(p: argparse.ArgumentParser, channels_from_data: bool = False) -> None:
    p.add_argument("--model", default="residual", help="registry name (see `zoo.available()`); default: residual")
    p.add_argument("--hidden", type=positive_int, default=64, help="hidden channels (default 64)")
    if channels_from_data:
        p.add_argument("--channels", type=positive_int, default=None, help="data channels (default: the data's; must match it)")
    else:
        p.add_argument("--channels", type=positive_int, default=3, help="data channels (default 3)")
    p.add_argument("--size", type=positive_int, default=32, help="image height and width in pixels (default 32)")
    p.add_argument("--schedule", default="linear", help="noise schedule: linear or cosine (default linear)")


def solver_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    from zoo.diffusion import SOLVERS

    p.add_argument("--solver", choices=SOLVERS, default="ddim",
                   help=help or "ddim (default, any eta) or dpmpp_2m (DPM-Solver++(2M): ~3x fewer steps, eta 0)")


def spacing_arg(p: argparse.ArgumentParser) -> None:
    from zoo.diffusion import SPACINGS

    p.add_argument("--spacing", choices=sorted(SPACINGS), default="leading", help="timestep spacing (default leading)")


def say(message: str) -> None:
    """A progress line on stderr, so that stdout holds the results only."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def check_out(path: Path, channels: int | None = None) -> None:
    """Refuse a bad output path before any work is done (``channels``: of the images that will be written)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot write {str(path)!r}: the suffix must be one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.absolute().parent.is_dir():
        raise FileNotFoundError(f"the directory of {str(path)!r} does not exist")
    if channels is not None and channels not in (1, 3) and path.suffix.lower() != ".npy":
        raise ValueError(f"cannot write {channels}-channel images to {str(path)!r}: image files hold 1 or 3 channels; "
                         "use a .npy output")


def write_images(path: Path, x) -> None:
    """Write a batch by suffix: .ppm/.pgm the first image, .npy the raw array, else a PNG-style grid.

    Grids of images under 64 px are enlarged (nearest neighbour) so that a person can see them.
    """
    import io

    import numpy as np

    from zoo.files import atomic_write
    from zoo.images import save_grid, write_ppm

    suffix = path.suffix.lower()
    if suffix in (".ppm", ".pgm"):
        write_ppm(path, x)
    elif suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(x, dtype=np.float32))
        atomic_write(path, buf.getvalue())
    else:
        save_grid(path, x, scale=grid_scale(x), pad_value=96)


def grid_scale(x) -> int:
    return max(1, 64 // x.shape[-1])


def write_json(path: str, obj, what: str = "results") -> None:
    import json

    from zoo.files import atomic_write

    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())
    print(f"{what} written to {path}")


def check_request(bundle: str, steps: int, modes, eta: float = 0.0, spacing: str = "leading", solver: str = "ddim",
                  precision: str = "fp32") -> None:
    """Check a sampling request against the bundle's manifest before a provider is chosen or anything runs.

    The manifest is read for this check only; ``runtime.load`` verifies it and every hash after.
    """
    from export.manifest import load_manifest
    from runtime.sampler import check_settings

    manifest = load_manifest(bundle, verify=False)
    T = manifest["schedule"]["num_train_timesteps"]
    if steps > T:
        raise ValueError(f"--steps {steps} is invalid: the bundle's model has {T} training timesteps (expected 1..{T})")
    for mode in modes:
        check_settings(manifest, bundle, steps, eta, spacing, mode, solver, precision)

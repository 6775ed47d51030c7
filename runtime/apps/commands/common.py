"""What several commands share: argument types, the model and solver options, and writing images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.requests import IMAGE_SUFFIXES
from zoo.conditioning import MAX_GUIDANCE


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (``cli.main``) so that every ``finally`` and staged-output cleanup runs.

    Here, not in ``cli``, so that a command catches the same class when the CLI runs as ``python -m``.
    """


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
    """--model, --hidden, --kernel-size, --channels, --size, --schedule; defaults from ``TrainConfig`` and ``DenoiserConfig``."""
    from zoo.configs import DenoiserConfig as D
    from zoo.schedules import NAMED_SCHEDULES
    from zoo.training.config import TrainConfig as T

    p.add_argument("--model", default=T.model, help=f"registry name (see `zoo.available()`); default: {T.model}")
    p.add_argument("--hidden", type=positive_int, default=D.hidden, help=f"hidden channels (default {D.hidden})")
    p.add_argument("--kernel-size", type=positive_int, default=D.kernel_size, help=f"odd conv kernel size (default {D.kernel_size})")
    if channels_from_data:
        p.add_argument("--channels", type=positive_int, default=None, help="data channels (default: the data's; must match it)")
    else:
        p.add_argument("--channels", type=positive_int, default=D.channels, help=f"data channels (default {D.channels})")
    p.add_argument("--size", type=positive_int, default=T.size, help=f"image height and width in pixels (default {T.size})")
    p.add_argument("--schedule", choices=NAMED_SCHEDULES, default=T.schedule, help=f"noise schedule (default {T.schedule})")


def solver_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    from runtime.requests import SampleRequest
    from zoo.solvers import SOLVERS, solver_help

    p.add_argument("--solver", choices=SOLVERS, default=SampleRequest.solver,
                   help=help or f"{solver_help()}; default {SampleRequest.solver}")


def spacing_arg(p: argparse.ArgumentParser) -> None:
    from runtime.requests import SampleRequest
    from zoo.diffusion import SPACINGS

    p.add_argument("--spacing", choices=sorted(SPACINGS), default=SampleRequest.spacing,
                   help=f"timestep spacing (default {SampleRequest.spacing})")


def request_args(p: argparse.ArgumentParser, *, steps: bool = True, eta_flag: bool = True, seed: bool = True) -> None:
    """--steps, --solver, --spacing, --eta and --seed of a sampling request, defaults from ``runtime.SampleRequest``."""
    from runtime.requests import SampleRequest

    if steps:
        p.add_argument("--steps", type=positive_int, default=SampleRequest.num_steps,
                       help=f"solver steps (default {SampleRequest.num_steps})")
    solver_arg(p)
    spacing_arg(p)
    if eta_flag:
        p.add_argument("--eta", type=eta, default=SampleRequest.eta, help="0 = deterministic DDIM (default), 1 = DDPM-like")
    if seed:
        p.add_argument("--seed", type=int, default=SampleRequest.seed, help="image k depends only on (seed, k)")


def say(message: str) -> None:
    """A progress line on stderr, so that stdout holds the results only."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def check_out(path: str | Path, channels: int | None = None, suffixes=IMAGE_SUFFIXES) -> Path:
    """Refuse a bad output file before any work is done (``runtime.requests.check_output``; suffixes=None: any)."""
    from runtime.requests import check_output

    return check_output(path, suffixes=suffixes, channels=channels)


def write_images(path: Path, x, rows: list[str] | None = None) -> None:
    """Write a batch by suffix: .ppm/.pgm the first image, .npy the raw array, else a PNG-style grid.

    Grids of images under 64 px are enlarged (nearest neighbour) so that a person can see them.
    ``rows``: class names, one row of the grid per class, named (``--class all``).
    """
    import io

    import numpy as np

    from zoo.files import atomic_write
    from zoo.images import save_grid, save_labelled_rows, write_ppm

    suffix = path.suffix.lower()
    if rows is not None:
        save_labelled_rows(path, x, rows, scale=grid_scale(x))
    elif suffix in (".ppm", ".pgm"):
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
    """Write ``obj`` as JSON atomically (check the path with ``check_out(path, suffixes=(".json",))`` first)."""
    import json

    from zoo.files import atomic_write

    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())
    print(f"{what} written to {path}")


# The CLI's names of the request's settings (request_args and the commands' own flags) -> SampleRequest's fields
_REQUEST_FLAGS = {"steps": "num_steps", "solver": "solver", "spacing": "spacing", "eta": "eta", "seed": "seed", "mode": "mode",
                  "precision": "precision", "batch_size": "batch_size"}


def request_fields(args: argparse.Namespace) -> dict:
    """The command's request flags (those it has and were given) as ``SampleRequest``'s fields."""
    return {field: getattr(args, flag) for flag, field in _REQUEST_FLAGS.items() if getattr(args, flag, None) is not None}


def request_of(args: argparse.Namespace, **settings):
    """The command's ``runtime.SampleRequest``: its flags and ``settings``."""
    from runtime.requests import SampleRequest

    return SampleRequest.of(**{**request_fields(args), **settings})


def read_manifest(bundle: str) -> dict:
    """The bundle's manifest, read unverified for the request's checks before a provider is chosen or anything runs
    (``runtime.load`` verifies it and every hash after, and refuses a plan resolved against another manifest)."""
    from export.format.manifest import load_manifest

    return load_manifest(bundle, verify=False)


def class_args(p: argparse.ArgumentParser, all_help: str, guidance_help: str | None = None) -> None:
    """--class and --guidance of a class-conditional bundle's request (read by ``parse_classes``, ``parse_guidance``)."""
    p.add_argument("--class", dest="classes", default=None,
                   help="class-conditional bundles: the class of every image, an index or a name (3, sneaker), one per "
                        f"image comma-separated, or 'all' ({all_help}); default: the null class (unconditional)")
    p.add_argument("--guidance", default=None,
                   help=guidance_help or f"classifier-free guidance w in 0..{MAX_GUIDANCE:g} with --class (default 1: "
                                         "conditional), or one per image, comma-separated")


def parse_classes(classes: str | None) -> str | list[int | str] | None:
    """--class: None, "all", or the classes asked for (indices or names, comma-separated), checked later by the bundle."""
    if classes is None or classes.strip() == "all":
        return None if classes is None else "all"
    return [int(v) if v.strip().isdigit() else v.strip() for v in classes.split(",")]


def parse_guidance(guidance: str | None) -> list[float] | None:
    """--guidance: one number or several, comma-separated (the ranges are checked by ``zoo.conditioning.check_guidance``)."""
    try:
        return None if guidance is None else [float(v) for v in guidance.split(",")]
    except ValueError:
        raise ValueError(f"--guidance {guidance!r} is invalid: expected a number in 0..{MAX_GUIDANCE:g}, or several "
                         "comma-separated") from None


def class_request(manifest: dict, n: int, classes: str | None) -> tuple[int, list | None]:
    """--class as (images, labels) for ``SampleRequest``: ``all`` is ``n`` images of every class in turn (n x K images,
    class by class), other classes are checked when the request is resolved."""
    labels = parse_classes(classes)
    if labels != "all":
        return n, labels
    if not manifest.get("classes"):
        raise ValueError("--class all needs a class-conditional bundle; this one is unconditional")
    k = manifest["classes"]["count"]
    return n * k, [c for c in range(k) for _ in range(n)]

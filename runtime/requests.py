"""Request checks, in one place: what a sampling request may ask of a bundle, and where its output may go.

The CLI's commands, the Python API (``Sampler.sample``, ``runtime.parity``, ``evaluate``) and the
server (next) call these before a provider is chosen or a session made, so a bad value gets the
same one-line message everywhere. ``SampleRequest``'s defaults are the defaults of every entry
point (the CLI's flags read them).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, get_args

import numpy as np

from export.format.artifacts import MODE_KINDS, Mode, select
from zoo.diffusion import SPACINGS, check_guidance, check_labels
from zoo.files import check_replaceable
from zoo.solvers import check_eta, get_solver
from zoo.validate import check_int

__all__ = ["Mode", "MODES", "PRECISIONS", "SampleRequest", "check_settings", "check_choices", "check_classes", "check_output",
           "check_cuda_graph", "IMAGE_SUFFIXES"]

MODES: tuple[str, ...] = get_args(Mode)  # ("loop", "fused", "step")
# fp32: the exported graphs. int8: the bundle's int8 variants (``export_bundle(int8=True)``), whose
# inner convolutions are quantized; the solver update stays fp32. CPU provider only.
PRECISIONS = ("fp32", "int8")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".npy")


@dataclass(frozen=True)
class SampleRequest:
    """A sampling request's settings and their defaults (one place: the CLI flags read these)."""

    n: int = 16  # images
    num_steps: int = 50  # solver steps
    solver: str = "ddim"  # a key of zoo.solvers.SOLVER_TABLE
    eta: float = 0.0  # 0 = deterministic DDIM, 1 = DDPM-like (solvers that take eta)
    spacing: str = "leading"  # zoo.diffusion.SPACINGS
    mode: str = "loop"  # MODES
    precision: str = "fp32"  # PRECISIONS
    seed: int = 0  # image k depends only on (seed, k, settings)
    batch_size: int = 16  # images per session run


def check_settings(manifest: dict[str, Any], path: str | os.PathLike, num_steps: int, eta: float = 0.0,
                   spacing: str = "leading", mode: str = "loop", solver: str = "ddim", precision: str = "fp32") -> None:
    """Raise ``ValueError`` naming the bad value if the bundle with ``manifest`` would refuse these settings.

    Needs no session and no provider: every entry point checks a request before a provider is chosen.
    """
    check_choices(solver=solver, eta=eta, spacing=spacing, mode=mode, precision=precision)
    entry = get_solver(solver)
    artifacts = manifest["artifacts"]
    if select(artifacts, MODE_KINDS[mode], solver, entry.stochastic(eta), "fp32") is None:
        raise ValueError(f"bundle {str(path)!r} has no {entry.label} graphs for {mode!r} mode (exported before they were "
                         f"added, or with solvers= leaving them out): re-export it (diffzoo export), or use another solver")
    # reduced-precision variants are made per fused step: the one of this solver must exist
    if precision != "fp32" and select(artifacts, "fused_step", solver, entry.stochastic(eta), precision, fallback=False) is None:
        raise ValueError(f"bundle {str(path)!r} has no {precision} artifacts for solver {solver!r}: use precision='fp32', "
                         "or a bundle exported with them (diffzoo export --int8)")
    T = manifest["schedule"]["num_train_timesteps"]
    if not isinstance(num_steps, bool) and isinstance(num_steps, int) and not 1 <= num_steps <= T:
        raise ValueError(f"num_steps={num_steps!r} (--steps) is invalid: the bundle's model has {T} training timesteps "
                         f"(expected 1..{T})")
    check_int("num_steps", num_steps, 1, T)


def check_choices(*, solver: str = "ddim", eta: float = 0.0, spacing: str = "leading", mode: str = "loop",
                  precision: str = "fp32") -> None:
    """The settings any bundle would refuse (checked before a training run is exported for ``eval``, say)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {list(MODES)}")
    check_eta(solver, eta)  # the solver's name, eta's range, and eta 0 for a deterministic solver
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {list(PRECISIONS)}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}: expected one of {sorted(SPACINGS)}")


def check_cuda_graph(cuda_graph: bool, mode: str, provider: str | None = None) -> None:
    """The CUDA-graph path replays the fused step on CUDA: it needs ``mode`` "fused" and, once it is known, CUDA."""
    if not cuda_graph:
        return
    if mode != "fused":
        raise ValueError(f"--cuda-graph replays the fused step on CUDA: it needs --mode fused (here: --mode {mode})")
    if provider is not None and provider not in ("cuda", "CUDAExecutionProvider"):
        raise ValueError(f"--cuda-graph replays the fused step on CUDA: it needs the CUDA provider (here: {provider})")


def check_classes(manifest: dict[str, Any], n: int, labels: Any = None,
                  guidance: Any = None) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """A request's labels and guidance as (n,) int64 / float32 arrays for a class-conditional bundle.

    ``labels``: one class or one per image, as indices or the manifest's class names; none (returns
    ``(None, None)``) samples the null class: unconditional (``Sampler.run_batch`` feeds the graphs
    the null class then). ``guidance``: one number in 0..``MAX_GUIDANCE`` or one per image (default 1), only with labels.
    An unconditional bundle refuses both. ``ValueError`` naming the bad value and what is accepted.
    """
    classes = manifest.get("classes")
    if not classes:
        if labels is not None or guidance is not None:
            raise ValueError("labels and guidance need a class-conditional bundle; this one is unconditional "
                             "(exported from a model without num_classes)")
        return None, None
    k, names = classes["count"], classes["names"]
    w = check_guidance(guidance, n, labels is not None)
    if labels is None:
        return None, None
    return check_labels(labels, n, k, names), w


def check_output(path: str | os.PathLike, *, suffixes: Iterable[str] | None = IMAGE_SUFFIXES, channels: int | None = None) -> Path:
    """Refuse a bad output file before any work is done; returns it as a ``Path``.

    ``suffixes``: the accepted suffixes (None: any); ``channels``: of the images to be written
    (image files hold 1 or 3; other counts need ``.npy``).
    """
    out = Path(path)
    if str(path) == "" or out.name in ("", ".", ".."):
        raise ValueError(f"{str(path)!r} is not a file name")
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise ValueError(f"cannot write {str(out)!r}: the suffix must be one of {', '.join(suffixes)}")
    if out.is_dir():
        raise IsADirectoryError(f"cannot write {str(out)!r}: it is a directory")
    check_replaceable(out)  # a device, link or FIFO is never replaced by the output
    if not out.absolute().parent.is_dir():
        raise FileNotFoundError(f"the directory of {str(out)!r} does not exist")
    try:  # a real probe: a read-only directory or file system fails here, not after the sampling
        tempfile.TemporaryFile(dir=out.absolute().parent).close()
    except OSError as e:
        raise PermissionError(f"cannot write into the directory of {str(out)!r}: {e.strerror}") from None
    if channels is not None and channels not in (1, 3) and out.suffix.lower() != ".npy":
        raise ValueError(f"cannot write {channels}-channel images to {str(out)!r}: image files hold 1 or 3 channels; "
                         "use a .npy output")
    return out

"""The sampling request, one object, and the plan it resolves into against one bundle: every request check, once.

``SampleRequest`` holds every setting of a request and every default (the CLI's flags, the Python API,
the server's optional inputs, parity, eval and the benches read them). ``SampleRequest.resolve``
checks it against a bundle's manifest, before any provider is chosen or session made, and returns
a ``Plan``: the timesteps, the solver row and the state it carries, the conditioning of every image,
the artifacts of the mode and precision. The sampler runs plans and checks nothing of them again;
a bad value gets the same one-line message from every entry point.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence, get_args

import numpy as np

from export.format.artifacts import MODE_KINDS, Mode, carried, select
from export.format.manifest import conditions_of
from runtime.noise import MAX_SEED
from zoo.conditioning import GUIDANCE_INPUT, Conditions, check_guidance, check_labels
from zoo.diffusion import DEFAULT_SPACING, SPACINGS, check_grid, ddim_timesteps
from zoo.files import check_replaceable
from zoo.solvers import DEFAULT_SOLVER, Solver, check_eta, get_solver
from zoo.validate import check_int

__all__ = ["Mode", "MODES", "PRECISIONS", "SampleRequest", "Plan", "Conditioning", "manifest_key",
           "check_output", "check_cuda_graph", "IMAGE_SUFFIXES", "PARITY_BATCH"]

MODES: tuple[str, ...] = get_args(Mode)  # ("loop", "fused", "step")
# fp32: the exported graphs. int8: the bundle's int8 variants (``export_bundle(int8=True)``), whose
# inner convolutions are quantized; the solver update stays fp32. CPU provider only.
PRECISIONS = ("fp32", "int8")
PARITY_BATCH = 4  # the images runtime.parity compares by default (every step of each is kept on both sides)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".npy")


@dataclass(frozen=True)
class SampleRequest:
    """One sampling request: every setting and its default, in one place (the CLI's flags and the server's inputs read
    these). ``resolve`` checks it against a bundle into a ``Plan``; ``SampleRequest.of`` builds one from keywords."""

    n: int = 16  # images: start .. start + n - 1 of the stream seed
    num_steps: int = 50  # solver steps
    solver: str = DEFAULT_SOLVER  # a key of zoo.solvers.SOLVER_TABLE
    eta: float = 0.0  # 0 = deterministic DDIM, 1 = DDPM-like (solvers that take eta)
    spacing: str = DEFAULT_SPACING  # zoo.diffusion.SPACINGS
    mode: str = "loop"  # MODES
    precision: str = "fp32"  # PRECISIONS
    seed: int = 0  # image k depends only on (seed, k, settings)
    start: int = 0  # the index of the first image in the stream
    batch_size: int = 16  # images per session run (fewer where memory is short: the images are the same)
    labels: Any = None  # class-conditional bundles: one class or one per image, indices or names; none: the null class
    guidance: Any = None  # with labels: one w in 0..MAX_GUIDANCE or one per image (default 1)
    timesteps: Sequence[int] | None = None  # any grid of distinct, descending timesteps, in place of num_steps and spacing

    @classmethod
    def of(cls, request: SampleRequest | None = None, /, **settings: Any) -> SampleRequest:
        """``request`` (default: every default) with ``settings`` in place of its fields; ``TypeError`` naming an
        unknown setting."""
        unknown = sorted(set(settings) - _FIELDS)
        if unknown:
            raise TypeError(f"unknown sampling setting(s) {unknown}: expected some of {sorted(_FIELDS)}")
        return replace(request if request is not None else cls(), **settings)

    def check(self) -> SampleRequest:
        """The request with what every bundle would refuse checked (before a run is exported for ``eval``, say), its
        numbers as Python ints and floats. ``ValueError`` naming the bad value and what is accepted."""
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}: expected one of {list(MODES)}")
        eta = check_eta(self.solver, self.eta)  # the solver's name, eta's range, and eta 0 for a deterministic solver
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: expected one of {list(PRECISIONS)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}: expected one of {sorted(SPACINGS)}")
        return replace(self, n=check_int("n", self.n, 1), seed=check_int("seed", self.seed, 0, MAX_SEED),
                       start=check_int("start", self.start, 0, MAX_SEED), eta=eta,
                       batch_size=check_int("batch_size", self.batch_size, 1),
                       num_steps=self.num_steps if self.timesteps is not None else check_int("num_steps", self.num_steps, 1))

    def resolve(self, manifest: dict[str, Any], path: str | os.PathLike) -> Plan:
        """This request checked against the bundle at ``path`` with ``manifest``: its ``Plan``, or one ``ValueError``
        naming the bad value. Needs no session and no provider."""
        r = self.check()
        entry = get_solver(r.solver)
        stochastic = entry.stochastic(r.eta)
        artifacts = manifest["artifacts"]
        if select(artifacts, MODE_KINDS[r.mode], r.solver, stochastic, "fp32") is None:
            raise ValueError(f"bundle {str(path)!r} has no {entry.label} graphs for {r.mode!r} mode (exported before they "
                             "were added, or with solvers= leaving them out): re-export it (diffzoo export), or use another "
                             "solver")
        # reduced-precision variants are made per fused step: the one of this solver must exist
        if r.precision != "fp32" and select(artifacts, "fused_step", r.solver, stochastic, r.precision, fallback=False) is None:
            raise ValueError(f"bundle {str(path)!r} has no {r.precision} artifacts for solver {r.solver!r}: use "
                             "precision='fp32', or a bundle exported with them (diffzoo export --int8)")
        T = manifest["schedule"]["num_train_timesteps"]
        if r.timesteps is not None:
            ts = check_grid(r.timesteps, T)
        else:
            if not isinstance(r.num_steps, bool) and not 1 <= r.num_steps <= T:
                raise ValueError(f"num_steps={r.num_steps!r} (--steps) is invalid: the bundle's model has {T} training "
                                 f"timesteps (expected 1..{T})")
            ts = ddim_timesteps(T, r.num_steps, r.spacing)
        ts.flags.writeable = False
        name = select(artifacts, MODE_KINDS[r.mode], r.solver, stochastic, r.precision)
        denoiser = select(artifacts, "denoiser", None, False, r.precision) if r.mode == "step" else None
        return Plan(replace(r, num_steps=len(ts)), str(path), manifest_key(manifest), ts, entry, stochastic, name, denoiser,
                    Conditioning.of(manifest, r.n, r.labels, r.guidance))


_FIELDS = frozenset(f.name for f in fields(SampleRequest))


@dataclass(frozen=True, eq=False)
class Conditioning:
    """What each image of a request is conditioned on, checked against its bundle: the graphs' inputs, a row per image.

    ``conditions`` is the bundle's declaration (``zoo.conditioning``; None: an unconditional bundle);
    ``labels`` and ``guidance`` are what was asked (none: the null class, which is also what the eager
    sampler takes); ``feeds`` are the guided graphs' conditioning inputs by the declaration's names,
    the null class filled in ({} for an unconditional bundle). Made by ``Conditioning.of``, which
    checks them.
    """

    n: int
    conditions: Conditions | None = None
    labels: np.ndarray | None = None  # (n,) int64
    guidance: np.ndarray | None = None  # (n,) float32, with labels
    feeds: dict[str, np.ndarray] = field(default_factory=dict)  # graph input -> (n, *dims) array

    @classmethod
    def of(cls, manifest: dict[str, Any], n: int, labels: Any = None, guidance: Any = None) -> Conditioning:
        """n images' labels and guidance checked against the bundle with ``manifest``: one class or one per image, as
        indices or the manifest's class names; ``guidance`` one w in 0..``MAX_GUIDANCE`` or one per image (default
        1), only with labels. An unconditional bundle refuses both. ``ValueError`` naming the bad value."""
        conditions = conditions_of(manifest)
        if conditions is None:
            if labels is not None or guidance is not None:
                raise ValueError("labels and guidance need a class-conditional bundle; this one is unconditional "
                                 "(exported from a model without num_classes)")
            return cls(n)
        w = check_guidance(guidance, n, labels is not None)
        feeds = {GUIDANCE_INPUT: np.ones(n, np.float32) if w is None else w}
        y = None
        for c in conditions.inputs:
            if c.kind != "class":  # the latent-model issue brings the text encoder that makes embeddings from prompts
                raise ValueError(f"the bundle is conditioned on {c.name!r} ({c.kind}), which this runtime cannot make "
                                 "from a request yet: it samples class-conditional and unconditional bundles")
            classes = manifest["classes"]
            y = None if labels is None else check_labels(labels, n, classes["count"], classes["names"])
            feeds[c.name] = np.full(n, c.null, np.int64) if y is None else y
        return cls(n, conditions, y, w, feeds)

    def rows(self, index: slice | Sequence[int] | np.ndarray) -> Conditioning:
        """The conditioning of some of the images (a slice or indices), checked already."""
        rows = index if isinstance(index, slice) else np.asarray(index, np.int64)
        n = len(range(self.n)[rows]) if isinstance(rows, slice) else len(rows)
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Conditioning(n, self.conditions, pick(self.labels), pick(self.guidance),
                            {k: pick(v) for k, v in self.feeds.items()})

    @staticmethod
    def join(parts: Sequence[Conditioning]) -> Conditioning:
        """Rows of several requests in one batch (the server's): all asked with labels, or all of the null class."""
        def cat(arrays: list) -> np.ndarray | None:
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        keys = parts[0].feeds.keys()
        return Conditioning(sum(p.n for p in parts), parts[0].conditions, cat([p.labels for p in parts]),
                            cat([p.guidance for p in parts]), {k: np.concatenate([p.feeds[k] for p in parts]) for k in keys})


@dataclass(frozen=True, eq=False)
class Plan:
    """A request resolved against one bundle (``SampleRequest.resolve``): what a run needs, every part of it checked.

    ``Sampler.sample`` and ``Sampler.run_batch`` run plans and check nothing of them again; ``bundle_key``
    ties a plan to the manifest it was checked against (``manifest_key``).
    """

    request: SampleRequest  # checked, num_steps = len(timesteps)
    bundle: str
    bundle_key: str
    timesteps: np.ndarray  # (S,) int64, distinct and descending, read-only
    solver: Solver  # the row of zoo.solvers.SOLVER_TABLE
    stochastic: bool  # whether its steps draw noise
    artifact: str  # the graph of the mode, in the precision (or fp32 where the kind has no variant)
    denoiser: str | None  # step mode: the denoiser graph it runs before each solver step
    conditioning: Conditioning

    @property
    def mode(self) -> str:
        return self.request.mode

    @property
    def eta(self) -> float:
        return self.request.eta

    @property
    def state(self) -> tuple[tuple[str, str], ...]:
        """The values carried from step to step as (graph input, graph output): x, then the solver's state."""
        return carried(self.solver.name)

    def with_conditioning(self, conditioning: Conditioning) -> Plan:
        """This plan's settings for other images (the server's rows of several requests), their conditioning checked."""
        return replace(self, conditioning=conditioning, request=replace(self.request, n=conditioning.n))

    def part(self, lo: int, hi: int) -> Plan:
        """Images lo .. hi - 1 of this plan's (a shard): the same settings, their conditioning; ``ValueError`` if empty."""
        n = self.request.n
        if not 0 <= lo < hi <= n:
            raise ValueError(f"images {lo}..{hi - 1} are not a part of the plan's {n} images")
        return replace(self, conditioning=self.conditioning.rows(slice(lo, hi)),
                       request=replace(self.request, n=hi - lo, start=self.request.start + lo))


def manifest_key(manifest: dict[str, Any]) -> str:
    """What ties a plan to the bundle it was resolved against: a digest of the manifest's content."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def check_cuda_graph(cuda_graph: bool, mode: str, provider: str | None = None) -> None:
    """The CUDA-graph path replays the fused step on CUDA: it needs ``mode`` "fused" and, once it is known, CUDA."""
    if not cuda_graph:
        return
    if mode != "fused":
        raise ValueError(f"--cuda-graph replays the fused step on CUDA: it needs --mode fused (here: --mode {mode})")
    if provider is not None and provider not in ("cuda", "CUDAExecutionProvider"):
        raise ValueError(f"--cuda-graph replays the fused step on CUDA: it needs the CUDA provider (here: {provider})")


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

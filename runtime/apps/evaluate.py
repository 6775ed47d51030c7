"""``diffzoo eval``: a bundle or a training run -> the quality report (``zoo.training.metrics``), shardable under torchrun.

Samples come from the torch-free runtime (a run directory is first exported to a verified bundle
in a temporary directory). Under ``torchrun --nproc-per-node N`` (RANK / WORLD_SIZE set) each
process samples its own contiguous shard of the image stream, rank 0 gathers them over gloo and
measures; image k depends only on (seed, k), so the result is the same for any N.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from zoo.solvers import SOLVERS

__all__ = ["evaluate", "data_source_of", "bundle_for"]

log = logging.getLogger(__name__)


def data_source_of(manifest: dict[str, Any]) -> str | None:
    """The data spec a bundle's model was trained on, where the bundle records it."""
    return manifest.get("data", {}).get("source")


def bundle_for(target: Path, tmp: Path, progress: bool, solvers: tuple[str, ...] = SOLVERS) -> Path:
    """``target`` itself if it is a bundle; a training run's last EMA weights exported (ONNX, ``solvers``) into ``tmp``."""
    from export.format.manifest import MANIFEST_NAME

    if (target / MANIFEST_NAME).is_file():
        return target
    import export
    from zoo.training.runs import run_weights
    from zoo.weights import class_names, load_weights

    model, schedule, meta = load_weights(run_weights(target))
    shape = tuple(meta["data"]["shape"])
    log.info("exporting %s to a temporary bundle", target)
    export.export_bundle(model, tmp / "bundle", schedule=schedule, example_shape=shape, formats=("onnx",),
                         data_source=meta["data"].get("source"), progress=progress, solvers=solvers,
                         class_names=class_names(meta))
    return tmp / "bundle"


def evaluate(
    target: str | os.PathLike,
    data: str | None = None,
    n: int = 360,
    num_steps: int = 50,
    spacing: str = "leading",
    eta: float = 0.0,
    seed: int = 0,
    mode: str = "loop",
    provider: str = "auto",
    progress: bool = False,
    solver: str = "ddim",
) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """Sample ``n`` images from a bundle or run directory with ``solver`` and measure them against ``data``.

    Returns ``(report dict, samples)`` on rank 0 and ``(None, None)`` on other ranks.
    """
    import runtime
    from export.format.manifest import load_manifest
    from runtime.requests import check_choices
    from zoo.training.distributed import init_distributed
    from zoo.training.metrics import quality_report

    check_choices(solver=solver, eta=eta, spacing=spacing, mode=mode)  # before a run is exported; the bundle's own after
    target = Path(target)
    if not target.is_dir():
        raise FileNotFoundError(f"{str(target)!r} is neither a bundle nor a training run directory")
    rank, world = init_distributed(backend="gloo")  # the shards travel as host arrays
    if n < world:
        raise ValueError(f"n={n} images cannot be split over {world} processes")
    with tempfile.TemporaryDirectory(prefix="diffzoo-eval-") as tmp:
        bundle = bundle_for(target, Path(tmp), progress, solvers=(solver,)) if rank == 0 else None
        if world > 1:
            bundle = _broadcast_bundle(bundle, target, Path(tmp), rank)
        manifest = load_manifest(bundle)
        data = data or data_source_of(manifest)
        if data is None:
            raise ValueError(f"{str(target)!r} does not record its training data: pass --data (e.g. digits)")
        threads = max(1, (os.cpu_count() or 1) // world)
        sampler = runtime.load(bundle, provider=provider, threads=threads)
        start, stop = rank * n // world, (rank + 1) * n // world
        x = sampler.sample(stop - start, num_steps=num_steps, seed=seed, eta=eta, spacing=spacing, mode=mode,
                           start=start, progress=progress and rank == 0, solver=solver)
        if world > 1:
            import torch.distributed as dist

            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, x)
            x = np.concatenate(parts)
        if rank != 0:
            return None, None
        report = quality_report(x, data, seed=0)
        info = {"target": str(target), "data": data, "samples": n, "solver": solver, "steps": num_steps, "spacing": spacing, "eta": eta,
                "seed": seed, "mode": mode, "provider": sampler.providers[0], "processes": world}
        return {**info, "quality": report.to_dict(), "text": report.format()}, x


def _broadcast_bundle(bundle: Path | None, target: Path, tmp: Path, rank: int) -> Path:
    """Every rank needs a bundle: a bundle target is shared; an exported one is sent from rank 0 as its files."""
    import torch.distributed as dist

    obj = [None]
    if rank == 0:
        obj = [None if bundle == target else {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}]
    dist.broadcast_object_list(obj, src=0)
    if obj[0] is None:
        return target
    out = tmp / "bundle"
    out.mkdir(exist_ok=True)
    for name, blob in obj[0].items():
        (out / Path(name).name).write_bytes(blob)
    return out  # runtime.load verifies every hash before use

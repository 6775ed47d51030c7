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

__all__ = ["evaluate", "EVAL_N", "requested_labels", "every_class", "class_settings", "format_curve", "data_source_of", "bundle_for"]

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


EVAL_N = 360  # images measured by default: the digits' held-out size


def evaluate(
    target: str | os.PathLike,
    data: str | None = None,
    n: int = EVAL_N,
    *,
    provider: str = "auto",
    progress: bool = False,
    labels: Any = None,
    guidance: Any = None,
    **settings: Any,
) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """Sample ``n`` images from a bundle or run directory and measure them against ``data``.

    ``settings`` are ``SampleRequest``'s (``num_steps``, ``solver``, ``eta``, ``spacing``, ``seed``, ``mode``,
    ``timesteps``), its defaults the request's. A class-conditional bundle takes ``labels`` as
    ``Sampler.sample`` does, or ``"all"`` (every class in turn: image k asks for class k mod K; the
    default when ``guidance`` is given); without labels it samples the null class. ``guidance``: one
    w, or several: the trade-off curve, the same ``n`` images (seeds and labels) sampled at each w and
    measured with the conditional accuracy.

    Returns ``(report dict, samples)`` on rank 0 (with a curve: ``report["curve"]``, one report per
    w, and the samples of every w stacked, (len(w), n, C, H, W)) and ``(None, None)`` on other ranks.
    """
    import runtime
    from export.format.manifest import load_manifest
    from runtime.requests import Conditioning, SampleRequest
    from zoo.conditioning import MAX_GUIDANCE, check_guidance
    from zoo.training.distributed import init_distributed
    from zoo.training.metrics import quality_report

    request = SampleRequest.of(n=n, **settings).check()  # before a run is exported; the bundle's own checks after
    try:  # the w of each report: every one in check_guidance's range
        ws = None if guidance is None else check_guidance(guidance, np.size(guidance), True)
    except ValueError:
        raise ValueError(f"guidance {np.atleast_1d(guidance).tolist()} is invalid: expected numbers in 0..{MAX_GUIDANCE:g}, "
                         "one per point of the trade-off curve") from None
    target = Path(target)
    if not target.is_dir():
        raise FileNotFoundError(f"{str(target)!r} is neither a bundle nor a training run directory")
    rank, world = init_distributed(backend="gloo")  # the shards travel as host arrays
    if n < world:
        raise ValueError(f"n={n} images cannot be split over {world} processes")
    with tempfile.TemporaryDirectory(prefix="diffzoo-eval-") as tmp:
        bundle = bundle_for(target, Path(tmp), progress, solvers=(request.solver,)) if rank == 0 else None
        if world > 1:
            bundle = _broadcast_bundle(bundle, target, Path(tmp), rank)
        manifest = load_manifest(bundle)
        labels = requested_labels(manifest, n, "all" if labels is None and ws is not None else labels)
        labels = Conditioning.of(manifest, n, labels, None if ws is None else ws[0]).labels  # none: the null class
        data = data or data_source_of(manifest)
        if data is None:
            raise ValueError(f"{str(target)!r} does not record its training data: pass --data (e.g. digits)")
        threads = max(1, (os.cpu_count() or 1) // world)
        sampler = runtime.load(bundle, provider=provider, threads=threads)
        start, stop = rank * n // world, (rank + 1) * n // world
        xs = []
        for w in ([None] if ws is None else ws.tolist()):
            plan = sampler.plan(request, labels=labels, guidance=w).part(start, stop)
            x = sampler.sample(plan, progress=progress and rank == 0)
            if world > 1:
                import torch.distributed as dist

                parts: list[Any] = [None] * world
                dist.all_gather_object(parts, x)
                x = np.concatenate(parts)
            xs.append(x)
        if rank != 0:
            return None, None
        r = plan.request
        info = {"target": str(target), "data": data, "samples": n, "solver": r.solver, "steps": r.num_steps,
                "spacing": r.spacing, "eta": r.eta, "seed": r.seed, "mode": r.mode, "provider": sampler.providers[0],
                "processes": world, "labels": _describe(labels, manifest)}
        reports = [quality_report(x, data, seed=0, labels=labels) for x in xs]
        if ws is None or len(ws) == 1:
            return {**info, "guidance": None if ws is None else float(ws[0]), "quality": reports[0].to_dict(),
                    "text": reports[0].format()}, xs[0]
        curve = [{"guidance": float(w), "quality": r.to_dict(), "text": r.format()} for w, r in zip(ws, reports)]
        return {**info, "curve": curve, "text": format_curve(curve)}, np.stack(xs)


def requested_labels(manifest: dict[str, Any], n: int, labels: Any) -> Any:
    """``"all"`` on a class-conditional bundle: every class in turn over n images; other labels as given (checked later)."""
    if isinstance(labels, str) and labels == "all" and manifest.get("classes"):
        return every_class(manifest, n)
    return labels


def every_class(manifest: dict[str, Any], n: int) -> np.ndarray:
    """n labels, every class of a class-conditional bundle in turn (image k asks for class k mod K)."""
    return np.arange(n, dtype=np.int64) % manifest["classes"]["count"]


def class_settings(manifest: dict[str, Any], n: int, guidance: float) -> dict[str, np.ndarray]:
    """A bench's request settings for n images: every class in turn at ``guidance`` ({} for an unconditional bundle).

    The keys are ``SampleRequest``'s and the eager samplers' arguments alike (``labels``, ``guidance``).
    """
    if not manifest.get("classes"):
        return {}
    return {"labels": every_class(manifest, n), "guidance": np.full(n, guidance, np.float32)}


def _describe(labels: np.ndarray | None, manifest: dict[str, Any]) -> str:
    if labels is None:
        return "null class (unconditional)" if manifest.get("classes") else "none (an unconditional bundle)"
    k = manifest["classes"]["count"]
    if len(labels) >= k and np.array_equal(labels, np.arange(len(labels)) % k):
        return f"every class in turn ({k} classes)"
    names = manifest["classes"]["names"]
    return ", ".join(sorted({names[i] for i in labels.tolist()}))


def format_curve(curve: list[dict[str, Any]]) -> str:
    """The guidance trade-off: per w, Frechet distance (with the floor), conditional accuracy, worst class, confidence."""
    q0 = curve[0]["quality"]
    lines = [f"{'guidance':>8}  {'Frechet':>8}  {'x floor':>7}  {'cond. acc':>9}  {'worst class':>11}  {'confidence':>10}  targets",
             *(f"{c['guidance']:>8g}  {c['quality']['fd_samples']:>8.2f}  {c['quality']['fd_ratio']:>6.2f}x  "
               f"{c['quality']['conditional_accuracy']:>9.3f}  {min(c['quality']['conditional_accuracy_per_class']):>11.3f}  "
               f"{c['quality']['confidence_samples']:>10.3f}  {'met' if c['quality']['met'] else 'NOT met'}" for c in curve),
             f"floor: Frechet {q0['fd_floor']:.2f} (real held-out), noise {q0['fd_noise']:.2f}; the classifier on real "
             f"held-out images: accuracy {q0['accuracy_floor']:.3f}, worst class {min(q0['accuracy_floor_per_class']):.3f}, "
             f"confidence {q0['confidence_data']:.3f}"]
    return "\n".join(lines)


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

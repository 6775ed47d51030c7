"""``export_bundle``: a zoo model to a verified, deployable directory of TorchScript and ONNX files.

Validation first (optimum's order: arguments, then export, then verification), then every
artifact is written into a temporary directory beside the target, verified against eager torch at
a shape other than the example, hashed into ``manifest.json`` and only then renamed into place.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import torch

import zoo
from export.loop import build_sampler_graph
from export.manifest import FORMAT_VERSION, MANIFEST_NAME, sha256_file
from export.onnx_export import DEFAULT_OPSET, EXPORTER, SUPPORTED_OPSETS, check_onnx, export_onnx
from export.quantize import calibration_states, quantize_int8
from export.specs import FORMATS, ArtifactSpec, artifact_specs, make_inputs
from export.torchscript import load_traced, save_traced
from export.verify import INT8_LOOP_RTOL, INT8_STEP_RTOL, Check, compare_outputs, derived_atol, raise_on_failures
from export.wrappers import DDIMStep, DPMStep, FusedDPMStep, FusedStep
from zoo.checkpoint import save_weights
from zoo.diffusion import SOLVERS
from zoo.files import clean_leftovers, output_lock, staged_dir, write_synced
from zoo.schedules import Schedule
from zoo.validate import check_int, check_real

__all__ = ["Bundle", "export_bundle", "load_model", "reference_outputs", "WEIGHTS_NAME", "VERIFY_STEPS"]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.safetensors"
VERIFY_STEPS = 50  # the whole-loop graphs are verified over this many DDIM steps
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


@dataclass(frozen=True)
class Bundle:
    """What ``export_bundle`` wrote: the directory, its manifest and the time each artifact took."""

    path: Path
    manifest: dict[str, Any]

    @property
    def checks(self) -> list[dict[str, Any]]:
        return self.manifest["verification"]

    @property
    def seconds(self) -> dict[str, float]:
        return self.manifest["export"]["seconds"]


def _verify_sizes(example_shape: tuple[int, int, int]) -> dict[str, int]:
    """Axis sizes for verification: another batch and another, odd, H x W than the example."""
    _, h, w = example_shape
    return {"batch": 3, "height": h // 2 + 3, "width": w // 2 + 1 if w // 2 + 1 != h // 2 + 3 else w // 2 + 2}


def _check_args(model, out_dir, schedule, example_shape, opset, formats, force, int8, atol) -> tuple[Path, tuple[str, ...]]:
    if not (isinstance(getattr(model, "name", None), str) and dataclasses.is_dataclass(getattr(model, "config", None))):
        raise TypeError(f"export_bundle needs a zoo model (built by zoo.build); got {type(model).__name__}")
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown format(s) {bad or formats!r}: accepted are {list(FORMATS)}")
    if atol is not None:
        check_real("atol", atol, 0.0, open_low=True, hint="or None to derive each bound")
    if int8 and not getattr(model, "supports_int8", False):
        raise ValueError(f"int8=True is not available for the {model.name!r} model: {getattr(model, 'int8_note', 'no int8 path')}")
    if int8 and "onnx" not in formats:
        raise ValueError(f"int8=True needs the 'onnx' format (int8 variants are ONNX graphs); formats={list(formats)}")
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset!r} is not supported: accepted are {SUPPORTED_OPSETS[0]}..{SUPPORTED_OPSETS[-1]}")
    if len(example_shape) != 3 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                                          for v in example_shape):
        raise ValueError(f"example_shape={example_shape!r} is invalid: expected (C, H, W) positive integers")
    if example_shape[0] != model.config.channels:
        raise ValueError(f"example_shape has C={example_shape[0]} but the model has channels={model.config.channels}")
    if schedule.num_train_timesteps != model.config.num_train_timesteps:
        raise ValueError(
            f"the schedule has T={schedule.num_train_timesteps} but the model was built for "
            f"num_train_timesteps={model.config.num_train_timesteps}"
        )
    out = Path(out_dir)
    if out.is_symlink():
        raise ValueError(f"{str(out)!r} is a symbolic link: pass the directory it points to ({str(out.resolve())!r})")
    _check_target(out, force)
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise FileNotFoundError(f"cannot create {str(out)!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write into {str(parent)!r}")
    return out, formats


def _check_target(out: Path, force: bool) -> None:
    """``out`` must be absent, empty, or (with ``force``) a diffzoo bundle: nothing else is ever replaced."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{str(out)!r} is not empty: choose another directory or pass force=True (--force)")
        if not (out / MANIFEST_NAME).is_file():
            raise FileExistsError(f"{str(out)!r} is not a diffzoo bundle (no {MANIFEST_NAME}): --force replaces bundles "
                                  "only; choose another directory")


def _reference(spec: ArtifactSpec, model: torch.nn.Module, schedule: Schedule, clip_range: float | None):
    """The eager torch callable an artifact must reproduce."""
    dpm = spec.solver == "dpmpp_2m"
    if spec.kind == "denoiser":
        return model
    if spec.kind == "step":
        return DPMStep(clip_range) if dpm else DDIMStep(spec.stochastic, clip_range)
    if spec.kind == "fused_step":
        if dpm:
            return FusedDPMStep(model, schedule.alphas_cumprod, clip_range).eval()
        return FusedStep(model, schedule.alphas_cumprod, spec.stochastic, clip_range).eval()

    def sampler(x_T, timesteps, noise=None, eta=None):
        if dpm:
            return zoo.dpmpp_2m_sample(model, schedule, x_T, num_steps=len(timesteps), spacing="leading", clip_range=clip_range)
        return zoo.ddim_sample(model, schedule, x_T, num_steps=len(timesteps), spacing="leading",
                               eta=0.0 if eta is None else float(eta), noise=noise, clip_range=clip_range)

    return sampler


def _calibration_feeds(spec: ArtifactSpec, states) -> list[dict[str, np.ndarray]]:
    """Feeds of ``spec``'s graph for each calibration state; noise (eta variants) does not reach the network."""
    rng = np.random.default_rng(0)
    feeds = []
    for x, t, t_prev in states:
        b = len(x)
        if spec.base == "denoiser":
            feeds.append({"x": x, "t": np.full(b, t, np.int64)})
            continue
        feed = {"x_t": x, "t": np.full(b, t, np.int64), "t_prev": np.full(b, t_prev, np.int64)}
        if spec.stochastic:
            feed.update(noise=rng.standard_normal(x.shape, dtype=np.float32), eta=np.array(0.5, np.float32))
        feeds.append(feed)
    return feeds


def _outputs(spec: ArtifactSpec, fn, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = fn(*inputs.values())
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {o.name: v.detach().cpu().numpy().astype(np.float64) for o, v in zip(spec.outputs, outs, strict=True)}


def reference_outputs(
    spec: ArtifactSpec, model: torch.nn.Module, schedule: Schedule, inputs: dict[str, torch.Tensor],
    clip_range: float | None = 1.0, dtype: torch.dtype = torch.float32,
) -> dict[str, np.ndarray]:
    """What eager torch computes for ``spec`` on ``inputs``, in ``dtype`` (float64: the bound's yardstick).

    The float64 run casts the model, the float inputs and the graph's float32 alpha-bar table
    (so both runs see the same alpha-bar values); integer inputs are unchanged.
    """
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    ref = _reference(spec, model, schedule, clip_range)
    if isinstance(ref, torch.nn.Module):
        ref = ref.to(dtype)
    return _outputs(spec, ref, inputs)


def _run_onnx(session, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def export_bundle(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    schedule: Schedule | None = None,
    example_shape: tuple[int, int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    formats: Iterable[str] = FORMATS,
    force: bool = False,
    clip_range: float | None = 1.0,
    seed: int = 0,
    progress: bool = False,
    extra: dict[str, Any] | None = None,
    int8: bool = False,
    atol: float | None = None,
    data_source: str | None = None,
    solvers: Iterable[str] = SOLVERS,
) -> Bundle:
    """Export ``model`` and its DDIM sampler to a verified bundle directory.

    Args:
        model: a zoo model (``zoo.build``), any device; exported in fp32 on the CPU.
        out_dir: the bundle directory; must be absent or empty unless ``force``; missing parents are created.
        schedule: the model's noise schedule; default ``linear_schedule(T)``.
        example_shape: (C, H, W) of the data, default (channels, 32, 32). Graphs stay dynamic in
            batch, height and width; verification runs at another batch and H x W.
        opset: ONNX opset, one of ``SUPPORTED_OPSETS``.
        formats: subset of ``("onnx", "torchscript")``; the fused step and the sampler are ONNX only.
        force: replace a non-empty ``out_dir`` (atomically, after the new bundle is verified).
        clip_range: the x0 clamp of the DDIM step, baked into the step graphs.
        seed: seeds the verification inputs.
        progress: show a tqdm bar over the artifacts.
        extra: JSON-serialisable facts stored in the manifest under ``"extra"`` (e.g. training run).
        int8: also write int8 variants of the denoiser, fused steps and samplers (``<name>_int8``,
            ONNX, for the CPU provider): inner convolutions quantized with ranges calibrated on the
            model's own DDIM trajectories (``export.quantize``), verified against eager fp32 within
            ``INT8_STEP_RTOL`` / ``INT8_LOOP_RTOL`` relative RMS, and the measured error recorded.
        data_source: the data spec the model was trained on (``"digits"``...), recorded in the
            manifest so that ``diffzoo eval`` knows what to measure against.
        solvers: the samplers to export graphs for, a subset of ``("ddim", "dpmpp_2m")`` (default
            both); the runtime refuses a solver the bundle has no graphs for, naming it.
        atol: override the fp32 bound on max |diff| for every fp32 artifact (as optimum-cli's
            ``--atol``). By default each bound is derived from eager float32's own error against
            float64 on the same inputs (``export.verify.derived_atol``); both are recorded.

    Raises:
        ValueError, TypeError, FileExistsError: bad arguments, before any work is done.
        ExportVerificationError: an artifact disagrees with eager torch; nothing is left on disk.
    """
    schedule = schedule or zoo.linear_schedule(model.config.num_train_timesteps)
    example_shape = tuple(example_shape or (model.config.channels, 32, 32))
    out, formats = _check_args(model, out_dir, schedule, example_shape, opset, formats, force, int8, atol)
    example_shape, opset, seed = tuple(int(v) for v in example_shape), int(opset), check_int("seed", seed, 0)
    solvers = tuple(solvers)
    if not solvers or any(x not in SOLVERS for x in solvers):
        raise ValueError(f"solvers={list(solvers)!r} is invalid: expected a non-empty subset of {list(SOLVERS)}")
    model = copy.deepcopy(model).float().cpu().eval()
    specs = [s for s in artifact_specs(model.config.channels, int8).values()
             if set(s.formats) & set(formats) and s.solver in (None, *solvers)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):  # a second export into the same directory is refused, not raced
        clean_leftovers(out)  # what an interrupted export of `out` left beside it
        _check_target(out, force)  # again, now that no other writer can change it
        with staged_dir(out) as tmp:  # verified and hashed in a sibling, then swapped in: never a partial bundle
            manifest = _export_into(tmp, model, schedule, example_shape, opset, formats, specs, clip_range, seed, progress, atol)
            manifest["extra"] = extra or {}
            if data_source is not None:
                manifest["data"]["source"] = data_source
            _finish(tmp, manifest)
    return Bundle(path=out, manifest=manifest)


@dataclass
class _Export:
    """What every artifact of one export shares: the model, its schedule, the seeded input stream, the graphs so far."""

    tmp: Path
    model: torch.nn.Module
    schedule: Schedule
    example_shape: tuple[int, int, int]
    opset: int
    clip_range: float | None
    seed: int
    g: torch.Generator
    protos: dict[str, onnx.ModelProto] = dataclasses.field(default_factory=dict)  # artifact -> its verified graph
    calibration: Any = None  # int8 calibration states, made on first use

    @property
    def example_sizes(self) -> dict[str, int]:
        _, h, w = self.example_shape
        return {"batch": 2, "height": h, "width": w, "steps": 2}


def _export_into(tmp, model, schedule, example_shape, opset, formats, specs, clip_range, seed, progress, user_atol) -> dict:
    ex = _Export(tmp, model, schedule, example_shape, opset, clip_range, seed, torch.Generator().manual_seed(seed))
    seconds: dict[str, float] = {}
    files: dict[str, dict[str, str]] = {}
    checks: list[Check] = []
    t0 = time.perf_counter()
    save_weights(tmp / WEIGHTS_NAME, model, schedule, data={"shape": list(example_shape), "range": [-1.0, 1.0]})
    seconds["weights"] = time.perf_counter() - t0
    bar = specs
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(specs, desc="export", unit="artifact")
    for spec in bar:
        t0 = time.perf_counter()
        files[spec.name], spec_checks = _export_artifact(ex, spec, formats, user_atol)
        checks += spec_checks
        seconds[spec.name] = time.perf_counter() - t0
    raise_on_failures(checks)
    return _manifest(ex, specs, files, checks, seconds)


def _export_artifact(ex: _Export, spec: ArtifactSpec, formats, user_atol) -> tuple[dict[str, str], list[Check]]:
    """Write ``spec``'s files in ``formats`` into the staging directory, each checked against eager torch."""
    ref = _reference(spec, ex.model, ex.schedule, ex.clip_range)
    is_loop = spec.kind == "sampler"
    sizes = {**_verify_sizes(ex.example_shape), "steps": VERIFY_STEPS} if is_loop else _verify_sizes(ex.example_shape)
    inputs = make_inputs(spec, sizes, ex.schedule.alphas_cumprod, ex.g)
    expected = _outputs(spec, ref, inputs)
    ref_err, source = None, None
    if spec.precision == "int8":
        atol, rtol = None, INT8_LOOP_RTOL if is_loop else INT8_STEP_RTOL
    else:
        rtol = None
        float64 = reference_outputs(spec, ex.model, ex.schedule, inputs, ex.clip_range, torch.float64)
        atol, ref_err = derived_atol(expected, float64)
        atol, source = (atol, "derived") if user_atol is None else (float(user_atol), "user")
    files, checks = {}, []
    for fmt in (f for f in spec.formats if f in formats):
        path = ex.tmp / f"{spec.name}{_SUFFIX[fmt]}"
        got = _write_torchscript(ex, spec, ref, path, inputs) if fmt == "torchscript" else _write_onnx(ex, spec, ref, path, inputs)
        files[fmt] = path.name
        c = compare_outputs(spec.name, fmt, sizes, got, expected, atol, rtol)
        c.reference_error, c.atol_source = ref_err, source
        checks.append(c)
        log.info("%s/%s: max |diff| %s, relative RMS %s (%s)", spec.name, fmt, _g(c.max_abs_diff), _g(c.rel_rms_diff),
                 f"rtol {rtol:g}" if rtol is not None else f"atol {atol:.3g}, {source}")
    return files, checks


def _write_torchscript(ex: _Export, spec: ArtifactSpec, ref, path: Path, inputs) -> dict[str, np.ndarray]:
    example = make_inputs(spec, ex.example_sizes, ex.schedule.alphas_cumprod, ex.g)
    save_traced(ref, tuple(example.values()), path)
    return _outputs(spec, load_traced(path), inputs)


def _write_onnx(ex: _Export, spec: ArtifactSpec, ref, path: Path, inputs) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    if spec.kind == "sampler":  # the Loop around the already verified step graph
        proto = build_sampler_graph(ex.protos[spec.body], spec.stochastic)
    elif spec.precision == "int8":
        if ex.calibration is None:
            ex.calibration = calibration_states(ex.model, ex.schedule, ex.example_shape, ex.seed, ex.clip_range)
        proto = quantize_int8(ex.protos[spec.base], _calibration_feeds(spec, ex.calibration))
    else:
        example = make_inputs(spec, ex.example_sizes, ex.schedule.alphas_cumprod, ex.g)
        proto = export_onnx(ref, spec, example, ex.opset)
    ex.protos[spec.name] = proto
    check_onnx(proto)
    onnx.save(proto, str(path))
    return _run_onnx(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), inputs)


def _manifest(ex: _Export, specs: list[ArtifactSpec], files, checks: list[Check], seconds: dict[str, float]) -> dict:
    import onnxruntime

    return {
        "format": "diffzoo-bundle",
        "format_version": FORMAT_VERSION,
        "model": {"name": ex.model.name, "config": dataclasses.asdict(ex.model.config)},
        "schedule": ex.schedule.to_dict(),
        "data": {"shape": list(ex.example_shape), "range": [-1.0, 1.0], "dtype": "float32"},
        "clip_range": ex.clip_range,
        "weights": WEIGHTS_NAME,
        "artifacts": {s.name: _artifact_entry(s, files[s.name]) for s in specs},
        "export": {
            "exporter": EXPORTER,
            "opset": ex.opset,
            "ir_version": int(ex.protos["fused_step"].ir_version) if "fused_step" in ex.protos else None,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "verify_steps": VERIFY_STEPS,
        },
        "verification": [c.to_dict() for c in checks],
    }


def _artifact_entry(s: ArtifactSpec, files: dict[str, str]) -> dict[str, Any]:
    """An artifact as the manifest records it, from its spec: the runtime builds its feeds from this."""
    return {
        "description": s.description,
        "kind": s.kind,
        "solver": s.solver,
        **({"body": s.body} if s.body else {}),
        "precision": s.precision,
        "stochastic": s.stochastic,
        "files": files,
        "inputs": [i.to_dict() for i in s.inputs],
        "outputs": [o.to_dict() for o in s.outputs],
        "dynamic_axes": sorted({d for io in s.inputs + s.outputs for d in io.dims if isinstance(d, str)}),
    }


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _finish(tmp: Path, manifest: dict) -> None:
    """Hash every file, then write the manifest last (fsynced)."""
    manifest["files"] = {
        p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()
    }
    write_synced(tmp / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


def load_model(bundle_dir: str | os.PathLike) -> tuple[torch.nn.Module, Schedule, dict[str, Any]]:
    """Rebuild the eager model of a bundle from its (hash-verified) safetensors weights.

    Returns ``(model in eval mode, schedule, manifest)``.
    """
    from export.manifest import load_manifest
    from zoo.checkpoint import load_weights

    manifest = load_manifest(bundle_dir)
    model, schedule, _ = load_weights(Path(bundle_dir) / manifest["weights"])
    return model, schedule, manifest

"""``export_bundle``: a zoo model to a verified, deployable directory of TorchScript and ONNX files.

Validation first (optimum's order: arguments, then export, then verification), then every
artifact is written into a temporary directory beside the target, verified against eager torch at
a shape other than the example, hashed into ``manifest.json`` and only then renamed into place.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import torch

from export.format.artifacts import FORMATS, ArtifactSpec, artifact_specs
from export.format.graphs import Weights, externalize
from export.format.manifest import (
    IDENTITY_KEY,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    artifact_entry,
    graph_identity,
    load_manifest,
    not_a_bundle,
    read_verified,
    write_manifest,
)
from export.inputs import make_inputs
from export.loop import build_sampler_graph
from export.network import Placeholder, splice
from export.onnx_export import (
    DEFAULT_OPSET,
    EXPORTER,
    SUPPORTED_OPSETS,
    check_onnx,
    export_onnx,
)
from export.quantize import calibration_states, quantize_int8
from export.torchscript import load_traced, save_traced
from export.verify import (
    INT8_LOOP_RTOL,
    INT8_STEP_RTOL,
    MEANINGFUL_ATOL,
    Check,
    check_atol,
    compare_outputs,
    derived_atol,
    raise_on_failures,
)
from export.wrappers import reference, wrapper
from zoo.conditioning import Conditions
from zoo.diffusion import DEFAULT_EPS_RULE, check_eps_rule
from zoo.files import check_output_dir, clean_leftovers, output_lock, staged_dir
from zoo.resources import activation_bytes, check_fits
from zoo.schedules import Schedule, linear_schedule
from zoo.solvers import SOLVERS, get_solver
from zoo.validate import check_int
from zoo.weights import save_weights

__all__ = ["Bundle", "ExportOptions", "export_bundle", "swap_weights", "load_model", "reference_outputs", "WEIGHTS_NAME", "VERIFY_STEPS",
           "verify_steps"]

log = logging.getLogger(__name__)

VERIFY_STEPS = 50  # the whole-loop graphs are verified over this many DDIM steps (at most T), or fewer (verify_steps)


def verify_steps(num_train_timesteps: int) -> list[int]:
    """The step counts a whole-loop graph is verified over, in the order tried: ``VERIFY_STEPS`` first, fewer where
    the derived bound at more steps exceeds ``MEANINGFUL_ATOL`` (chaotic models: float32 cannot follow float64 that
    far), never more than the model's T."""
    return sorted({min(s, num_train_timesteps) for s in (VERIFY_STEPS, 10, 2)}, reverse=True)
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


def _verify_sizes(example_shape: tuple[int, int, int], multiple: int = 1, loop: bool = False) -> dict[str, int]:
    """Axis sizes for verification: another batch and another H x W than the example (odd where the model allows:
    ``multiple`` is the model config's ``size_multiple``, what its height and width must divide by).

    A whole loop (``loop``) is verified at about 8 x 9 where the others are larger: its body, the fused step, is
    verified at the full sizes, what the loop adds (the Loop's wiring, the carried state, the accumulated error) does
    not depend on H x W, and its references run the network twice (float32, float64) on every step: at the 35.7 M
    DDPM CIFAR-10 UNet's 24 x 32 they took 40-50 s per loop."""
    _, h, w = example_shape

    def up(v: int) -> int:
        return -(-v // multiple) * multiple

    height, width = up(h // 2 + 3), up(w // 2 + 1)
    if loop:
        height, width = min(height, up(8)), min(width, up(9))
    return {"batch": 3, "height": height, "width": width if width != height else width + multiple}


def _check_args(model, out_dir, o: ExportOptions, schedule: Schedule, example_shape) -> Path:
    """Every argument checked before any work is done; returns the output path."""
    if not (isinstance(getattr(model, "name", None), str) and dataclasses.is_dataclass(getattr(model, "config", None))):
        raise TypeError(f"export_bundle needs a zoo model (built by zoo.build); got {type(model).__name__}")
    k = getattr(model.config, "num_classes", 0)
    if o.class_names is not None and (not k or len(o.class_names) != k):
        raise ValueError(f"class_names has {len(o.class_names)} names but the model has num_classes={k}")
    if o.class_names is not None and (len(set(o.class_names)) != len(o.class_names) or not all(
            isinstance(n, str) and n.strip() for n in o.class_names)):
        raise ValueError(f"class_names {list(o.class_names)} are invalid: expected distinct, non-empty names")
    for i, name in enumerate(o.class_names or ()):  # `--class 3` and `--class all` must mean one thing each
        if name.strip() == "all" or (name.strip().isdigit() and int(name) != i):
            raise ValueError(f"class name {name!r} (class {i}) is invalid: " + (
                "'all' asks for every class (--class all)" if name.strip() == "all" else
                f"a number names the class of that index, and this is class {i}") + "; choose another name")
    bad = [f for f in o.formats if f not in FORMATS]
    if bad or not o.formats:
        raise ValueError(f"unknown format(s) {bad or list(o.formats)!r}: accepted are {list(FORMATS)}")
    if not o.solvers or any(x not in SOLVERS for x in o.solvers):
        raise ValueError(f"solvers={list(o.solvers)!r} is invalid: expected a non-empty subset of {list(SOLVERS)}")
    check_atol(o.atol)
    check_eps_rule(o.eps_rule)
    if o.int8 and not getattr(model, "supports_int8", False):
        raise ValueError(f"int8=True is not available for the {model.name!r} model: {getattr(model, 'int8_note', 'no int8 path')}")
    if o.int8 and "onnx" not in o.formats:
        raise ValueError(f"int8=True needs the 'onnx' format (int8 variants are ONNX graphs); formats={list(o.formats)}")
    if o.opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {o.opset!r} is not supported: accepted are {SUPPORTED_OPSETS[0]}..{SUPPORTED_OPSETS[-1]}")
    if len(example_shape) != 3 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                                          for v in example_shape):
        raise ValueError(f"example_shape={example_shape!r} is invalid: expected (C, H, W) positive integers")
    c, h, w = example_shape
    check_fits(activation_bytes(2, c, getattr(model.config, "hidden", c), h, w),
               f"exporting at the example shape {tuple(example_shape)}", "choose a smaller example shape (--size)")
    multiple = getattr(model.config, "size_multiple", 1)
    if h % multiple or w % multiple:
        raise ValueError(f"example_shape={tuple(example_shape)} is invalid for this {model.name!r} model: its height and "
                         f"width must be multiples of {multiple} (each down block but the last halves them)")
    if example_shape[0] != model.config.channels:
        raise ValueError(f"example_shape has C={example_shape[0]} but the model has channels={model.config.channels}")
    if schedule.num_train_timesteps != model.config.num_train_timesteps:
        raise ValueError(
            f"the schedule has T={schedule.num_train_timesteps} but the model was built for "
            f"num_train_timesteps={model.config.num_train_timesteps}"
        )
    out = Path(out_dir)
    if not str(out_dir).strip() or out.name in ("", ".", ".."):
        raise ValueError(f"out_dir={str(out_dir)!r} is invalid: a bundle needs a directory of its own (e.g. bundles/NAME)")
    if out.is_symlink():
        raise ValueError(f"{str(out)!r} is a symbolic link: pass the directory it points to ({str(out.resolve())!r})")
    _check_target(out, o.force)
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise FileNotFoundError(f"cannot create {str(out)!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write into {str(parent)!r}")
    return out


def _check_target(out: Path, force: bool) -> None:
    """``out`` must be absent, empty, or (with ``force``) a diffzoo bundle: nothing else is ever replaced."""
    if check_output_dir(out, "a diffzoo bundle", not_a_bundle) and not force:
        raise FileExistsError(f"{str(out)!r} holds a diffzoo bundle: pass force=True (--force) to replace it once the new "
                              "one is verified, or choose another directory")


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
        extra = {"noise": lambda: rng.standard_normal(x.shape, dtype=np.float32), "eta": lambda: np.array(0.5, np.float32)}
        feed.update({n: extra[n]() for n in get_solver(spec.solver).noise_inputs(spec.stochastic)})
        feeds.append(feed)
    return feeds


def _outputs(spec: ArtifactSpec, outs) -> dict[str, np.ndarray]:
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {o.name: v.detach().cpu().numpy().astype(np.float64) for o, v in zip(spec.outputs, outs, strict=True)}


def _run_module(spec: ArtifactSpec, module, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A module's (or traced graph's) outputs, its inputs bound by position in the table's order (``wrapper`` checks it)."""
    with torch.inference_mode():
        return _outputs(spec, module(*(inputs[i.name] for i in spec.inputs)))


def reference_outputs(
    spec: ArtifactSpec, model: torch.nn.Module, schedule: Schedule, inputs: dict[str, torch.Tensor],
    clip_range: float | None = 1.0, dtype: torch.dtype = torch.float32, eps_rule: str = DEFAULT_EPS_RULE,
) -> dict[str, np.ndarray]:
    """What eager torch computes for ``spec`` on ``inputs``, in ``dtype`` (float64: the bound's yardstick).

    The float64 run casts the model, the float inputs and the graph's float32 alpha-bar table
    (so both runs see the same alpha-bar values); integer inputs are unchanged. The model is cast in
    place for the run, and each of its tensors back to its own dtype after, exactly (float32 to
    float64 and back loses nothing): a float64 copy beside it would add 3x its weights to an
    export's peak. A solver step's reference does not read the model, which is then left alone.
    """
    cast = contextlib.nullcontext()
    if dtype != torch.float32:
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        cast = _cast(model, dtype) if spec.kind != "step" else cast
    with cast, torch.inference_mode():
        return _outputs(spec, reference(spec, model, schedule, clip_range, eps_rule, dtype)(inputs))


@contextlib.contextmanager
def _cast(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """``model``'s floating-point parameters and buffers in ``dtype`` while the block runs, each restored after."""
    tensors = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()]
    dtypes = [t.dtype for t in tensors]
    try:
        for t in tensors:
            t.data = t.data.to(dtype)
        yield
    finally:
        for t, original in zip(tensors, dtypes):
            t.data = t.data.to(original)


def _run_onnx(session, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


@dataclass(frozen=True)
class ExportOptions:
    """How ``export_bundle`` exports: every option in one object, each with its default.

    Fields:
        schedule: the model's noise schedule; default ``linear_schedule(T)``.
        example_shape: (C, H, W) of the data, default (channels, 32, 32). Graphs stay dynamic in
            batch, height and width; verification runs at another batch and H x W.
        opset: ONNX opset, one of ``SUPPORTED_OPSETS``.
        formats: subset of ``("onnx", "torchscript")``; the fused step and the sampler are ONNX only.
        solvers: the samplers to export graphs for, a subset of ``zoo.solvers.SOLVERS`` (default
            all); the runtime refuses a solver the bundle has no graphs for, naming it.
        force: replace a non-empty ``out_dir`` (atomically, after the new bundle is verified).
        clip_range: the x0 clamp of the solver steps, baked into the step graphs.
        eps_rule: the eps the DDIM update remixes the clipped x0 with (``zoo.diffusion.EPS_RULES``),
            baked into every step graph and recorded in the manifest: "clipped" (the default, what
            holds under guidance) or "model" (diffusers' default: a diffusers folder's export).
        seed: seeds the verification inputs.
        progress: show a tqdm bar over the artifacts.
        extra: JSON-serialisable facts stored in the manifest under ``"extra"`` (e.g. training run).
        int8: also write int8 variants of the denoiser, fused steps and samplers (``<name>_int8``,
            ONNX, for the CPU provider): inner convolutions quantized with ranges calibrated on the
            model's own DDIM trajectories (``export.quantize``), verified against eager fp32 within
            ``INT8_STEP_RTOL`` / ``INT8_LOOP_RTOL`` relative RMS, and the measured error recorded.
        atol: override the fp32 bound on max |diff| for every fp32 artifact (as optimum-cli's
            ``--atol``). By default each bound is derived from eager float32's own error against
            float64 on the same inputs (``export.verify.derived_atol``); both are recorded.
        data_source: the data spec the model was trained on (``"digits"``...), recorded in the
            manifest so that ``diffzoo eval`` knows what to measure against.
        class_names: a class-conditional model's class names, recorded in the manifest's
            ``classes`` (count, names, null index) with the labels and guidance inputs of its graphs.
    """

    schedule: Schedule | None = None
    example_shape: tuple[int, int, int] | None = None
    opset: int = DEFAULT_OPSET
    formats: tuple[str, ...] = FORMATS
    solvers: tuple[str, ...] = SOLVERS
    force: bool = False
    clip_range: float | None = 1.0
    eps_rule: str = DEFAULT_EPS_RULE
    seed: int = 0
    progress: bool = False
    extra: dict[str, Any] | None = None
    int8: bool = False
    atol: float | None = None
    data_source: str | None = None
    class_names: tuple[str, ...] | None = None  # a class-conditional model's class names (default "0", "1", ...)

    def __post_init__(self) -> None:
        for name in ("formats", "solvers"):  # any iterable, stored as a tuple
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))


def export_bundle(model: torch.nn.Module, out_dir: str | os.PathLike, options: ExportOptions | None = None,
                  **overrides: Any) -> Bundle:
    """Export ``model`` and its samplers to a verified bundle directory.

    Args:
        model: a zoo model (``zoo.build``), any device; exported in fp32 on the CPU.
        out_dir: the bundle directory; must be absent or empty unless ``force``; missing parents are created.
        options: an ``ExportOptions``; ``overrides`` replace its fields by name
            (``export_bundle(model, "b", example_shape=(1, 8, 8), solvers=("ddim",))``).

    Raises:
        ValueError, TypeError, FileExistsError: bad arguments, before any work is done.
        ExportVerificationError: an artifact disagrees with eager torch; nothing is left on disk.
    """
    o = dataclasses.replace(options or ExportOptions(), **overrides)  # an unknown option is a TypeError naming it
    schedule = o.schedule or linear_schedule(model.config.num_train_timesteps)
    example_shape = tuple(o.example_shape or (model.config.channels, 32, 32))
    out = _check_args(model, out_dir, o, schedule, example_shape)
    o = dataclasses.replace(o, schedule=schedule, example_shape=tuple(int(v) for v in example_shape), opset=int(o.opset))
    model = copy.deepcopy(model).float().cpu().eval()
    specs = [s for s in artifact_specs(model.config.channels, o.int8, getattr(model, "conditioning", None)).values()
             if set(s.formats) & set(o.formats) and s.solver in (None, *o.solvers)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):  # a second export into the same directory is refused, not raced
        clean_leftovers(out)  # what an interrupted export of `out` left beside it
        _check_target(out, o.force)  # again, now that no other writer can change it
        with staged_dir(out) as tmp:  # verified and hashed in a sibling, then swapped in: never a partial bundle
            manifest = write_manifest(tmp, _export_into(tmp, model, o, specs))
    return Bundle(path=out, manifest=manifest)


def swap_weights(bundle_dir: str | os.PathLike, model: torch.nn.Module, schedule: Schedule | None = None,
                 progress: bool = False, source: str | None = None) -> Bundle:
    """Put ``model``'s weights into the bundle at ``bundle_dir``: every graph kept, verified again, swapped in atomically.

    ``model`` must be the bundle's architecture (its registry name and config; a fine-tune, another
    EMA, a diffusers folder of the same config); its weights are written in the layout of the
    bundle's weights file, so every ONNX graph's references stay valid, each graph is stamped with
    the new weights' hash, the TorchScript denoiser is traced again, and every artifact is checked
    against eager torch with the new weights exactly as ``export_bundle`` checks it (bounds derived
    again). Only then does the new bundle replace the old one; a failure leaves it untouched.

    Raises:
        ValueError: another architecture or schedule (naming what differs), a bundle with int8
            variants (calibrated on the old weights) or whose graphs hold their weights themselves.
        ExportVerificationError: an artifact disagrees with eager torch under the new weights.
    """
    from export.format.graphs import external_tensors, read_graph
    from export.format.manifest import table_spec

    root = Path(bundle_dir)
    manifest = load_manifest(root)
    _check_swappable(root, manifest, model, schedule)
    model = copy.deepcopy(model).float().cpu().eval()
    specs = [table_spec(manifest, name) for name in manifest["artifacts"]]
    for spec in specs:
        if spec.kind != "step" and "onnx" in manifest["artifacts"][spec.name]["files"] \
                and not external_tensors(onnx.load_model_from_string(read_graph(root, manifest, spec.name))):
            raise ValueError(f"the bundle {str(root)!r} was exported before its graphs referred to one weights file "
                             f"({spec.name!r} holds its weights itself): export the new weights instead")
    formats = {fmt for entry in manifest["artifacts"].values() for fmt in entry["files"]}
    classes = manifest.get("classes")
    o = ExportOptions(schedule=Schedule.from_dict(manifest["schedule"]), example_shape=tuple(manifest["data"]["shape"]),
                      opset=manifest["export"]["opset"], formats=tuple(f for f in FORMATS if f in formats),
                      clip_range=manifest["clip_range"], eps_rule=manifest["eps_rule"], progress=progress,
                      extra={**manifest.get("extra", {}), "weights_swapped": {
                          "from_sha256": manifest["files"][manifest["weights"]]["sha256"], "source": source,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}},
                      data_source=manifest["data"].get("source"), class_names=tuple(classes["names"]) if classes else None)
    with output_lock(root):
        clean_leftovers(root)
        with staged_dir(root) as tmp:
            for name in manifest["files"]:  # the verified bytes, never re-read from the path afterwards
                if name not in (manifest["weights"], MANIFEST_NAME):
                    (tmp / name).write_bytes(read_verified(root, manifest, name))
            new = write_manifest(tmp, _export_into(tmp, model, o, specs, swap_into=Weights.of_bundle(root, manifest)))
    return Bundle(path=root, manifest=new)


def _check_swappable(root: Path, manifest: dict[str, Any], model, schedule: Schedule | None) -> None:
    if not (isinstance(getattr(model, "name", None), str) and dataclasses.is_dataclass(getattr(model, "config", None))):
        raise TypeError(f"swap_weights needs a zoo model (built by zoo.build); got {type(model).__name__}")
    have, want = manifest["model"], {"name": model.name, "config": json.loads(json.dumps(dataclasses.asdict(model.config)))}
    if have != want:
        if have["name"] != want["name"]:
            diff = {"name": (have["name"], want["name"])}
        else:
            diff = {k: (have["config"].get(k), want["config"].get(k)) for k in sorted(set(have["config"]) | set(want["config"]))
                    if have["config"].get(k) != want["config"].get(k)}
        shown = ", ".join(f"{k} {b!r} here, {a!r} in the bundle" for k, (a, b) in diff.items())
        raise ValueError(f"the bundle {str(root)!r} holds another architecture than this {want['name']!r} model "
                         f"({shown})"[:600] + ": weights go only into a bundle of the same architecture; export this model instead")
    if schedule is not None and schedule.to_dict() != manifest["schedule"]:
        raise ValueError(f"the weights come with the schedule {schedule.to_dict()!r}, and the bundle's graphs bake "
                         f"{manifest['schedule']!r}: export this model instead")
    if any(entry.get("precision") == "int8" for entry in manifest["artifacts"].values()):
        raise ValueError(f"the bundle {str(root)!r} has int8 variants, calibrated on its weights: export the new weights "
                         "instead (int8=True calibrates them again)")


@dataclass
class _Export:
    """What every artifact of one export shares: the model, the options, the seeded input stream, the graphs so far."""

    tmp: Path
    model: torch.nn.Module
    o: ExportOptions  # schedule and example_shape filled in
    g: torch.Generator
    weights: Weights  # the staged weights file every graph refers to (export.format.graphs)
    protos: dict[str, onnx.ModelProto] = dataclasses.field(default_factory=dict)  # artifact -> its verified graph
    calibration: Any = None  # int8 calibration states, made on first use
    swap: bool = False  # the staged ONNX graphs are a bundle's, kept as they are with new weights (swap_weights)

    @property
    def schedule(self) -> Schedule:
        return self.o.schedule

    @property
    def example_shape(self) -> tuple[int, int, int]:
        return self.o.example_shape

    @property
    def num_classes(self) -> int:
        return getattr(self.model.config, "num_classes", 0)

    @property
    def conditions(self) -> Conditions | None:
        return getattr(self.model, "conditioning", None)

    @property
    def denoiser(self) -> ArtifactSpec:
        return artifact_specs(self.model.config.channels, False, self.conditions)["denoiser"]

    @property
    def example_sizes(self) -> dict[str, int]:
        _, h, w = self.example_shape
        return {"batch": 2, "height": h, "width": w, "steps": min(2, self.schedule.num_train_timesteps)}


def _export_into(tmp: Path, model: torch.nn.Module, o: ExportOptions, specs: list[ArtifactSpec],
                 swap_into: Weights | None = None) -> dict:
    """Weights and every artifact written and verified into ``tmp``; returns the manifest without its file table.

    ``swap_into``: the weights of the bundle whose ONNX graphs ``tmp`` already holds; they are kept
    (restamped) instead of exported, and the new weights file must have the same layout."""
    seconds: dict[str, float] = {}
    files: dict[str, dict[str, str]] = {}
    checks: list[Check] = []
    t0 = time.perf_counter()
    save_weights(tmp / WEIGHTS_NAME, model, o.schedule, data={"shape": list(o.example_shape), "range": [-1.0, 1.0]})
    ex = _Export(tmp, model, o, torch.Generator().manual_seed(o.seed), Weights.of_file(tmp / WEIGHTS_NAME),
                 swap=swap_into is not None)
    if swap_into is not None and ex.weights.stored != swap_into.stored:  # the same config has the same layout: a guard
        raise ValueError("the new weights do not have the layout of the bundle's weights file: export this model instead")
    seconds["weights"] = time.perf_counter() - t0
    bar = specs
    if o.progress:
        from tqdm.auto import tqdm

        bar = tqdm(specs, desc="export", unit="artifact")
    for spec in bar:
        t0 = time.perf_counter()
        files[spec.name], spec_checks = _export_artifact(ex, spec)
        checks += spec_checks
        seconds[spec.name] = time.perf_counter() - t0
    raise_on_failures(checks)
    return _manifest(ex, specs, files, checks, seconds)


def _export_artifact(ex: _Export, spec: ArtifactSpec) -> tuple[dict[str, str], list[Check]]:
    """Write ``spec``'s files in the chosen formats into the staging directory, each checked against eager torch."""
    is_loop = spec.kind == "sampler"
    base = _verify_sizes(ex.example_shape, getattr(ex.model.config, "size_multiple", 1), loop=is_loop)
    skipped = []  # (steps, derived bound) of whole-loop runs whose bound checks nothing
    attempts = verify_steps(ex.schedule.num_train_timesteps) if is_loop else [None]
    ref_err, source, atol, rtol = None, None, None, None
    for steps in attempts:
        sizes = base if steps is None else {**base, "steps": steps}
        inputs = make_inputs(spec, sizes, ex.schedule.alphas_cumprod, ex.g, conditions=ex.conditions)
        expected = reference_outputs(spec, ex.model, ex.schedule, inputs, ex.o.clip_range, torch.float32, ex.o.eps_rule)
        if spec.precision == "int8":  # an approximation by design: bounded relative to the output (export.verify)
            rtol = INT8_LOOP_RTOL if is_loop else INT8_STEP_RTOL
            break
        float64 = reference_outputs(spec, ex.model, ex.schedule, inputs, ex.o.clip_range, torch.float64, ex.o.eps_rule)
        atol, ref_err = derived_atol(expected, float64)
        source = "derived"
        if ex.o.atol is not None:
            atol, source = float(ex.o.atol), "user"
        if source == "user" or atol <= MEANINGFUL_ATOL or steps == attempts[-1]:
            break
        skipped.append((steps, atol))  # float32 cannot follow float64 this far (chaotic: random weights): fewer steps
    notes = [f"over {s} steps the derived bound {a:.3g} exceeds {MEANINGFUL_ATOL:g} and would check nothing" for s, a in skipped]
    if source == "derived" and atol > MEANINGFUL_ATOL:
        notes.append(f"the derived bound {atol:.3g} exceeds {MEANINGFUL_ATOL:g} even here: this check only catches a "
                     "graph that is grossly wrong")
    note = "; ".join(notes) or None
    files, checks = {}, []
    for fmt in (f for f in spec.formats if f in ex.o.formats):
        path = ex.tmp / f"{spec.name}{_SUFFIX[fmt]}"
        got = _write_torchscript(ex, spec, path, inputs) if fmt == "torchscript" else _write_onnx(ex, spec, path, inputs)
        files[fmt] = path.name
        c = compare_outputs(spec.name, fmt, sizes, got, expected, atol, rtol)
        c.reference_error, c.atol_source, c.note = ref_err, source, note
        checks.append(c)
        log.info("%s/%s: max |diff| %s, relative RMS %s (%s)", spec.name, fmt, _g(c.max_abs_diff), _g(c.rel_rms_diff),
                 f"rtol {rtol:g}" if rtol is not None else f"atol {atol:.3g}, {source}")
    return files, checks


def _module(ex: _Export, spec: ArtifactSpec) -> torch.nn.Module:
    """The module traced for ``spec``: a fused step's network is a placeholder, replaced by the denoiser's graph
    (``export.network``), so the network is traced once per export."""
    model = ex.model
    if spec.kind == "fused_step":
        model = Placeholder(model, ex.denoiser.conditioning)
    return wrapper(spec, model, ex.schedule, ex.o.clip_range, ex.o.eps_rule)


def _write_torchscript(ex: _Export, spec: ArtifactSpec, path: Path, inputs) -> dict[str, np.ndarray]:
    example = make_inputs(spec, ex.example_sizes, ex.schedule.alphas_cumprod, ex.g, conditions=ex.conditions)
    save_traced(_module(ex, spec), tuple(example[i.name] for i in spec.inputs), path)
    return _run_module(spec, load_traced(path), inputs)


def _write_onnx(ex: _Export, spec: ArtifactSpec, path: Path, inputs) -> dict[str, np.ndarray]:
    if ex.swap:  # the bundle's verified graph, staged: the same structure, now referring to the new weights
        proto = onnx.load(str(path), load_external_data=False)
        del proto.metadata_props[:]
    elif spec.kind == "sampler":  # the Loop around the already verified step graph
        proto = build_sampler_graph(ex.protos[spec.body], spec)
    elif spec.precision == "int8":
        if ex.calibration is None:
            ex.calibration = calibration_states(ex.model, ex.schedule, ex.example_shape, ex.o.seed, ex.o.clip_range,
                                                ex.o.eps_rule)
        proto = quantize_int8(ex.weights.inline(ex.protos[spec.base]), _calibration_feeds(spec, ex.calibration))
    else:
        example = make_inputs(spec, ex.example_sizes, ex.schedule.alphas_cumprod, ex.g, conditions=ex.conditions)
        proto = export_onnx(_module(ex, spec), spec, example, ex.o.opset, ex.weights)
        if spec.kind == "fused_step":
            proto = splice(proto, ex.protos[ex.denoiser.name])
    if not ex.swap:
        proto = externalize(proto, ex.weights)  # its weights: references into the weights file
    ex.protos[spec.name] = proto
    onnx.save(_stamped(proto, spec, ex), str(path))
    check_onnx(path)  # by path: the checker finds the weights file beside the graph
    return _run_onnx(ex.weights.session(path.read_bytes()), inputs)  # as the runtime runs it: its weights from memory


def _stamped(proto: onnx.ModelProto, spec: ArtifactSpec, ex: _Export) -> onnx.ModelProto:
    """A copy of ``proto`` carrying its identity in its own bytes (checked against the manifest at every session)."""
    settings = {"clip_range": ex.o.clip_range, "eps_rule": ex.o.eps_rule, "schedule": ex.schedule.to_dict(),
                "conditioning": ex.conditions and ex.conditions.to_dict(), "weights": WEIGHTS_NAME,
                "files": {WEIGHTS_NAME: {"sha256": ex.weights.sha256}}}
    identity = graph_identity(spec.name, artifact_entry(spec, {}), settings)
    stamped = onnx.ModelProto()
    stamped.CopyFrom(proto)
    stamped.metadata_props.add(key=IDENTITY_KEY, value=json.dumps(identity, sort_keys=True))
    return stamped


def _manifest(ex: _Export, specs: list[ArtifactSpec], files, checks: list[Check], seconds: dict[str, float]) -> dict:
    import onnxruntime

    return {
        "model": {"name": ex.model.name, "config": dataclasses.asdict(ex.model.config)},
        "schedule": ex.schedule.to_dict(),
        "data": {"shape": list(ex.example_shape), "range": [-1.0, 1.0], "dtype": "float32",
                 **({"source": ex.o.data_source} if ex.o.data_source is not None else {})},
        "clip_range": ex.o.clip_range,
        "eps_rule": ex.o.eps_rule,
        "conditioning": ex.conditions and ex.conditions.to_dict(),
        "weights": WEIGHTS_NAME,
        "artifacts": {s.name: artifact_entry(s, files[s.name]) for s in specs},
        "export": {
            "exporter": EXPORTER,
            "opset": ex.o.opset,
            "ir_version": int(ex.protos["fused_step"].ir_version) if "fused_step" in ex.protos else None,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "verify_steps": verify_steps(ex.schedule.num_train_timesteps)[0],
        },
        "verification": [c.to_dict() for c in checks],
        "extra": ex.o.extra or {},
        **({"classes": {"count": ex.num_classes, "null": ex.num_classes,
                        "names": list(ex.o.class_names or (str(i) for i in range(ex.num_classes)))}} if ex.num_classes else {}),
    }


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def load_model(bundle_dir: str | os.PathLike) -> tuple[torch.nn.Module, Schedule, dict[str, Any]]:
    """Rebuild the eager model of a bundle from its (hash-verified) safetensors weights.

    Returns ``(model in eval mode, schedule, manifest)``.
    """
    from zoo.weights import load_weights

    manifest = load_manifest(bundle_dir)
    model, schedule, _ = load_weights(Path(bundle_dir) / manifest["weights"])
    return model, schedule, manifest

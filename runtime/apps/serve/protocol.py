"""The served model's inputs and outputs (KServe v2), and what one request's rows mean: one place.

The model configuration the server writes, the Triton model that reads requests and the client
that builds them all read ``INPUTS`` and ``OUTPUTS``. A request holds rows, one per image: image
``index`` of the stream ``seed`` (``runtime.noise``), so a served image is the one
``diffzoo sample --seed`` gives at that index. Rows with the same ``Settings`` run together.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from export.format.manifest import conditions_of
from runtime.memory import sample_bytes
from runtime.requests import Conditioning, Plan, SampleRequest
from zoo.conditioning import GUIDANCE_INPUT
from zoo.images import to_uint8
from zoo.resources import check_fits
from zoo.validate import check_int

__all__ = ["Input", "INPUTS", "REQUIRED", "Output", "OUTPUTS", "NUMPY_TYPES", "Settings", "Rows", "inputs_of", "read_rows",
           "check_memory"]

# KServe v2 datatype -> the numpy dtype of its arrays (tritonclient's and the Python backend's)
NUMPY_TYPES: dict[str, Any] = {"INT64": np.int64, "FP32": np.float32, "BYTES": np.object_, "UINT8": np.uint8}


@dataclass(frozen=True)
class Input:
    """One per-row input: its KServe datatype and, for an optional one, its default."""

    name: str
    datatype: str  # KServe v2: INT64, FP32, BYTES
    default: Any = None  # a missing optional input takes SampleRequest's default
    # What it conditions: a kind of zoo.conditioning.KINDS (only a bundle that declares an input of that kind has it),
    # or the guidance of any conditioned bundle; absent: the null class, w 1.
    conditioning: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None and self.conditioning is None


INPUTS: tuple[Input, ...] = (
    Input("seed", "INT64"),  # the noise stream (diffzoo sample --seed)
    Input("index", "INT64"),  # the image's index in that stream
    Input("steps", "INT64", SampleRequest.num_steps),
    Input("solver", "BYTES", SampleRequest.solver),
    Input("eta", "FP32", SampleRequest.eta),
    Input("spacing", "BYTES", SampleRequest.spacing),
    Input("label", "INT64", conditioning="class"),  # the class index
    Input("guidance", "FP32", conditioning=GUIDANCE_INPUT),  # classifier-free guidance w in 0..MAX_GUIDANCE, with label
)
REQUIRED = tuple(i.name for i in INPUTS if i.required)


@dataclass(frozen=True)
class Output:
    """One per-row output: its datatype, its dims given the bundle's (C, H, W), and its value from the samples."""

    datatype: str
    dims: Callable[[tuple[int, int, int]], list[int]]
    value: Callable[[np.ndarray], np.ndarray]  # (B, C, H, W) float32 samples -> the output's (B, *dims)


OUTPUTS: dict[str, Output] = {
    "image": Output("UINT8", lambda chw: [chw[1], chw[2], chw[0]], to_uint8),  # (H, W, C), as the PNG writer converts
    "sample": Output("FP32", lambda chw: list(chw), lambda x: x),  # (C, H, W): the sampler's values
}


def inputs_of(manifest: dict[str, Any]) -> tuple[Input, ...]:
    """The inputs a bundle's model takes: those of the kinds its conditioning declares and guidance (label and
    guidance for a class-conditional one), and none of them for an unconditional one."""
    conditions = conditions_of(manifest)
    kinds = {c.kind for c in conditions.inputs} | {GUIDANCE_INPUT} if conditions else set()
    return tuple(i for i in INPUTS if i.conditioning is None or i.conditioning in kinds)


@dataclass(frozen=True)
class Settings:
    """What rows must share to run in one session call (their seeds, indices, labels and w may differ)."""

    steps: int
    solver: str
    eta: float
    spacing: str
    conditional: bool  # rows with labels, or rows of the null class

    def request(self, mode: str, precision: str) -> SampleRequest:
        """The settings as the request of one image (``resolve`` it against the bundle: the rows' plan)."""
        return SampleRequest(n=1, num_steps=self.steps, solver=self.solver, eta=self.eta, spacing=self.spacing, mode=mode,
                             precision=precision)


_PER_ROW = tuple(f.name for f in fields(Settings) if f.name != "conditional")  # inputs of the same names


@dataclass
class Rows:
    """One request's rows, checked: per-row seeds, indices and settings, the plan of each settings, the conditioning."""

    seed: np.ndarray  # (B,) int64
    index: np.ndarray  # (B,) int64
    settings: list[Settings]  # one per row
    plans: dict[Settings, Plan]  # the resolved plan of each settings of the rows
    conditioning: Conditioning  # (B,) rows


def _column(name: str, datatype: str, value: Any, b: int) -> list:
    """A (B,) or (B, 1) input as a list of B Python values; ``ValueError`` naming it otherwise."""
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (b,):
        raise ValueError(f"input {name!r} has shape {list(np.asarray(value).shape)}: expected [{b}, 1], one value per row "
                         "(every input has the rows of 'seed')")
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
    if arr.dtype != NUMPY_TYPES[datatype]:
        raise ValueError(f"input {name!r} has datatype {arr.dtype}: expected {datatype}")
    return arr.tolist()


def read_rows(manifest: dict[str, Any], path: str, get: Callable[[str], Any], mode: str = SampleRequest.mode,
              precision: str = SampleRequest.precision, plans: dict[Settings, Plan] | None = None) -> Rows:
    """One request's inputs (``get(name)`` -> array or None) as checked ``Rows``, or one ``ValueError``.

    Every value is checked as ``diffzoo sample`` checks it (``SampleRequest.resolve``); the message names
    the input, the row and the value, and what is accepted. ``plans``: the settings already resolved
    for this bundle, mode and precision (a server's instance keeps them), added to as rows pass.
    """
    seed = get("seed")
    if seed is None:
        raise ValueError(f"input 'seed' is missing: every request needs {' and '.join(map(repr, REQUIRED))}, INT64, one per row")
    b = int(np.asarray(seed).shape[0]) if np.asarray(seed).ndim else 0
    if b < 1:
        raise ValueError("input 'seed' has no rows: expected shape [B, 1] with B >= 1")
    cols: dict[str, list] = {}
    for spec in INPUTS:  # label and guidance too: an unconditional bundle refuses them below, by name
        value = get(spec.name)
        if value is None:
            if spec.required:
                raise ValueError(f"input {spec.name!r} is missing: every request needs {' and '.join(map(repr, REQUIRED))}, "
                                 "INT64, one per row")
            continue
        cols[spec.name] = _column(spec.name, spec.datatype, value, b)
    for name in REQUIRED:  # a stream and an index into it: integers >= 0
        for r, v in enumerate(cols[name]):
            _row(r, lambda: check_int(name, v, 0))
    settings = []
    plans = {} if plans is None else plans
    defaults = {i.name: i.default for i in INPUTS}
    for r in range(b):
        s = Settings(**{k: cols[k][r] if k in cols else defaults[k] for k in _PER_ROW}, conditional="label" in cols)
        if s not in plans:
            plans[s] = _row(r, lambda: s.request(mode, precision).resolve(manifest, path))
        settings.append(s)
    conditioning = Conditioning.of(manifest, b, cols.get("label"), cols.get("guidance"))
    return Rows(np.asarray(cols["seed"], np.int64), np.asarray(cols["index"], np.int64), settings,
                {s: plans[s] for s in settings}, conditioning)


def _row(r: int, check: Callable[[], Any]) -> Any:
    try:
        return check()
    except (ValueError, TypeError) as e:
        raise ValueError(f"row {r}: {e}") from None


def check_memory(shape: tuple[int, int, int], rows: Rows) -> None:
    """Refuse a request whose rows' noise and results cannot fit in the memory available here."""
    need = sum(sample_bytes(shape, 1, 1, s.steps, rows.plans[s].stochastic) for s in rows.settings)
    check_fits(need, f"{len(rows.settings)} images of {shape}", "send fewer images per request")

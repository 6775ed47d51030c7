"""The artifact table: every graph a bundle can hold, declared once (kind, solver, precision, stochastic, body, named I/O).

Part of the bundle format (``export.format``), torch-free: the exporters take names, dynamic axes
and formats from it, the manifest records it, and the runtime picks the artifact a request runs
with ``select`` on what the manifest records, so a name used in a graph cannot drift from the name
the runtime feeds and nothing is rebuilt from a name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from zoo.conditioning import Conditions
from zoo.solvers import SOLVER_TABLE, Solver

__all__ = ["IOSpec", "ArtifactSpec", "KINDS", "carried", "Mode", "MODE_KINDS", "FORMATS", "has_int8", "artifact_specs", "ARTIFACT_NAMES",
           "select"]

FORMATS = ("onnx", "torchscript")  # the file formats a bundle can hold


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[str | int, ...]  # str = dynamic axis (batch, height, width, steps)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.dims)}


# What an artifact computes: the network alone, one solver update, network + update, or the whole loop.
KINDS = ("denoiser", "step", "fused_step", "sampler")


@dataclass(frozen=True)
class ArtifactSpec:
    name: str
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    formats: tuple[str, ...]  # the formats this artifact is exported to
    stochastic: bool
    description: str
    precision: str = "fp32"  # of the network's convolutions; the solver arithmetic is always fp32
    kind: str = "denoiser"  # one of KINDS
    solver: str | None = None  # a key of zoo.solvers.SOLVER_TABLE; None for the denoiser
    body: str | None = None  # a sampler's fused step, the graph its Loop is built around
    fp32: str | None = None  # a reduced-precision variant's fp32 artifact
    conditioning: tuple[str, ...] = ()  # its conditioning inputs (zoo.conditioning), the same on every step of a loop

    @property
    def base(self) -> str:
        """The fp32 artifact this one is derived from (itself for fp32)."""
        return self.fp32 or self.name


def carried(solver: str | None) -> tuple[tuple[str, str], ...]:
    """(input, output) names of what a step of ``solver`` carries to the next: x, then the solver table's state."""
    return (("x_t", "x_prev"),) + (SOLVER_TABLE[solver].state if solver else ())


def _solver_specs(solver: Solver, img: tuple, cond: tuple[IOSpec, ...]) -> list[ArtifactSpec]:
    """A solver's step, fused-step and whole-loop artifacts in each of its variants, from its row alone.

    Inputs in one order for every solver: what the step updates (x, then its state), where it is
    (alpha-bars, or timesteps inside the fused graphs: now, next, then the earlier ones it reads),
    the conditioning, and last its noise.
    """
    f32, i64, batch = "float32", "int64", ("batch",)
    state_in = tuple(IOSpec(i, f32, img) for i, _ in solver.state)
    out = (IOSpec("x_prev", f32, img),) + tuple(IOSpec(o, f32, img) for _, o in solver.state)
    state = "; carries " + ", ".join(i for i, _ in solver.state) if solver.state else ""
    specs = []
    for kind in ("step", "fused_step", "sampler"):
        for stochastic in solver.variants:
            noise = tuple(IOSpec(n, f32, img if n == "noise" else ()) for n in solver.noise_inputs(stochastic))
            how = " with eta and noise inputs" if "eta" in solver.noise_inputs(stochastic) else (
                " with a noise input" if stochastic else "")
            if kind == "step":
                inputs = ((IOSpec("x_t", f32, img), IOSpec("eps", f32, img)) + state_in
                          + tuple(IOSpec(n, f32, batch) for n in solver.alpha_inputs) + noise)
                outputs, formats, what = out, FORMATS, f"one {solver.label} update{how}{state}"
            elif kind == "fused_step":
                inputs = ((IOSpec("x_t", f32, img),) + state_in
                          + tuple(IOSpec(n, i64, batch) for n in solver.timestep_inputs)
                          + cond + noise)
                outputs, formats, what = out, ("onnx",), f"denoiser + {solver.label} update{how}, alpha-bar table inside"
            else:
                loop_noise = tuple(IOSpec(n.name, f32, ("steps", *img) if n.name == "noise" else ()) for n in noise)
                inputs = (IOSpec("x_T", f32, img), IOSpec("timesteps", i64, ("steps",))) + cond + loop_noise
                outputs, formats = (IOSpec("x_0", f32, img),), ("onnx",)
                what = f"the whole {solver.label} loop{how} (ONNX Loop; noise per step)" if stochastic else (
                    f"the whole {solver.label} loop (ONNX Loop)")
            specs.append(ArtifactSpec(solver.artifact(kind, stochastic), inputs, outputs, formats, stochastic, what, kind=kind,
                                      solver=solver.name, body=solver.artifact("fused_step", stochastic) if kind == "sampler" else None,
                                      conditioning=() if kind == "step" else tuple(c.name for c in cond)))
    return specs


def artifact_specs(channels: int, int8: bool = False, conditions: Conditions | None = None) -> dict[str, ArtifactSpec]:
    """The bundle's artifacts by name, generated from the solver table; with ``int8``, also the int8 variants (ONNX only).

    ``conditions``: a conditioned model's declaration (``zoo.conditioning``). The denoiser takes its
    inputs (one branch per call: class labels, the null class for the unconditional one); the fused
    steps and the whole-loop graphs take them, each one's negative input where it has one, and the
    guidance w (B,) float32, and make the guided prediction inside (``zoo.conditioning.guided_eps``:
    one network call on a 2B batch).
    """
    img = ("batch", channels, "height", "width")
    f32, i64, batch = "float32", "int64", ("batch",)

    def cond_inputs(guided: bool) -> tuple[IOSpec, ...]:
        return tuple(IOSpec(name, dtype, ("batch", *dims)) for name, dtype, dims in
                     (conditions.graph_inputs(guided) if conditions else ()))

    described = "; " + ", ".join(i.name for i in conditions.inputs) + " (one branch per call)" if conditions else ""
    specs = [
        ArtifactSpec("denoiser", (IOSpec("x", f32, img), IOSpec("t", i64, batch)) + cond_inputs(False),
                     (IOSpec("eps", f32, img),), FORMATS, False, "the epsilon predictor, time channel inside" + described,
                     conditioning=tuple(i.name for i in cond_inputs(False))),
    ]
    cond = cond_inputs(True)
    for solver in SOLVER_TABLE.values():
        specs += _solver_specs(solver, img, cond)
    if int8:
        specs += [
            dataclasses.replace(s, name=f"{s.name}_int8", formats=("onnx",), precision="int8", fp32=s.name,
                                description=f"{s.description}; inner convolutions in int8",
                                body=s.body and f"{s.body}_int8")
            for s in specs if has_int8(s)
        ]
    return {s.name: s for s in specs}


def has_int8(spec: ArtifactSpec) -> bool:
    """Whether ``spec`` gets an int8 variant (``<name>_int8``): the graphs that hold the network, of the solvers that
    carry no state (int8 calibration replays an eager run's inputs, which hold none of a solver's state)."""
    return spec.kind in ("denoiser", "fused_step", "sampler") and (spec.solver is None or not SOLVER_TABLE[spec.solver].state)


ARTIFACT_NAMES = tuple(artifact_specs(3))


# The kind of artifact each runtime mode runs ("step" runs the denoiser before it).
Mode = Literal["loop", "fused", "step"]
MODE_KINDS: dict[str, str] = dict(zip(get_args(Mode), ("sampler", "fused_step", "step"), strict=True))


def select(artifacts: dict[str, dict[str, Any]], kind: str, solver: str | None = None, stochastic: bool = False,
           precision: str = "fp32", fallback: bool = True) -> str | None:
    """The name of the artifact of ``kind`` for (solver, stochastic, precision) among a manifest's ``artifacts``.

    With ``fallback``, ``precision`` falls back to fp32 for a kind without a reduced-precision
    variant (the int8 ``step`` mode runs the int8 denoiser and the fp32 solver step). None if the
    bundle has none.
    """
    def match(p: str) -> str | None:
        return next((name for name, a in artifacts.items() if a.get("kind") == kind and a.get("solver") == solver
                     and a.get("stochastic") == stochastic and a.get("precision") == p), None)

    return match(precision) or (match("fp32") if fallback and precision != "fp32" else None)

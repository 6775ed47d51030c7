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

from zoo.solvers import SOLVER_TABLE

__all__ = ["IOSpec", "ArtifactSpec", "KINDS", "carried", "Mode", "MODE_KINDS", "FORMATS", "INT8_ARTIFACTS", "artifact_specs", "ARTIFACT_NAMES",
           "select"]

FORMATS = ("onnx", "torchscript")  # the file formats a bundle can hold

# The artifacts that get an int8 variant, named ``<name>_int8``: the ones that hold the network.
# (The DDIM step alone has no convolution; the int8 samplers are Loops around the int8 fused steps.)
INT8_ARTIFACTS = ("denoiser", "fused_step", "fused_step_eta", "sampler", "sampler_eta")


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

    @property
    def base(self) -> str:
        """The fp32 artifact this one is derived from (itself for fp32)."""
        return self.fp32 or self.name


def carried(solver: str | None) -> tuple[tuple[str, str], ...]:
    """(input, output) names of what a step of ``solver`` carries to the next: x, then the solver table's state."""
    return (("x_t", "x_prev"),) + (SOLVER_TABLE[solver].state if solver else ())


def artifact_specs(channels: int, int8: bool = False, conditional: bool = False) -> dict[str, ArtifactSpec]:
    """The bundle's artifacts by name; with ``int8``, also the int8 variants (ONNX only).

    ``conditional``: a class-conditional model's artifacts. The denoiser takes ``labels`` (B,) int64;
    the fused steps and the whole-loop graphs take ``labels`` and ``guidance`` (B,) float32 and make
    the guided prediction inside (``zoo.diffusion.guided_eps``: one network call on a 2B batch).
    """
    img = ("batch", channels, "height", "width")
    f32, i64 = "float32", "int64"
    batch = ("batch",)
    labels = (IOSpec("labels", i64, batch),) if conditional else ()
    cond = labels + ((IOSpec("guidance", f32, batch),) if conditional else ())
    noise = (IOSpec("noise", f32, img), IOSpec("eta", f32, ()))
    step_in = (IOSpec("x_t", f32, img), IOSpec("eps", f32, img), IOSpec("alpha_bar_t", f32, batch), IOSpec("alpha_bar_prev", f32, batch))
    fused_in = (IOSpec("x_t", f32, img), IOSpec("t", i64, batch), IOSpec("t_prev", i64, batch))
    loop_in = (IOSpec("x_T", f32, img), IOSpec("timesteps", i64, ("steps",))) + cond
    loop_noise = (IOSpec("noise", f32, ("steps", *img)), IOSpec("eta", f32, ()))
    x_prev = (IOSpec("x_prev", f32, img),)
    # DPM-Solver++(2M) carries the previous x0 prediction and needs the previous step's timestep.
    dpm_state, dpm_out = (IOSpec("x0_last", f32, img),), x_prev + (IOSpec("x0", f32, img),)
    dpm_step_in = step_in[:2] + dpm_state + step_in[2:] + (IOSpec("alpha_bar_last", f32, batch),)
    dpm_fused_in = fused_in[:1] + dpm_state + fused_in[1:] + (IOSpec("t_last", i64, batch),) + cond
    fused_in = fused_in + cond
    x_0 = (IOSpec("x_0", f32, img),)
    both, onnx_only = ("onnx", "torchscript"), ("onnx",)
    A = ArtifactSpec
    specs = [
        A("denoiser", (IOSpec("x", f32, img), IOSpec("t", i64, batch)) + labels, (IOSpec("eps", f32, img),), both, False,
          "the epsilon predictor, time channel inside" + ("; labels (the null class for the unconditional branch)"
                                                          if conditional else "")),
        A("ddim_step", step_in, x_prev, both, False, "one deterministic DDIM update (eta = 0)", kind="step", solver="ddim"),
        A("ddim_step_eta", step_in + noise, x_prev, both, True, "one DDIM update with eta and noise inputs",
          kind="step", solver="ddim"),
        A("fused_step", fused_in, x_prev, onnx_only, False, "denoiser + DDIM update, alpha-bar table inside",
          kind="fused_step", solver="ddim"),
        A("fused_step_eta", fused_in + noise, x_prev, onnx_only, True, "fused step with eta and noise inputs",
          kind="fused_step", solver="ddim"),
        A("sampler", loop_in, x_0, onnx_only, False, "the whole DDIM loop (ONNX Loop)", kind="sampler", solver="ddim",
          body="fused_step"),
        A("sampler_eta", loop_in + loop_noise, x_0, onnx_only, True, "the whole DDIM loop with eta and per-step noise",
          kind="sampler", solver="ddim", body="fused_step_eta"),
        A("dpmpp_step", dpm_step_in, dpm_out, both, False, "one DPM-Solver++(2M) update; x0 is the next step's x0_last",
          kind="step", solver="dpmpp_2m"),
        A("fused_step_dpmpp", dpm_fused_in, dpm_out, onnx_only, False,
          "denoiser + DPM-Solver++(2M) update, alpha-bar table inside", kind="fused_step", solver="dpmpp_2m"),
        A("sampler_dpmpp", loop_in, x_0, onnx_only, False, "the whole DPM-Solver++(2M) loop (ONNX Loop)",
          kind="sampler", solver="dpmpp_2m", body="fused_step_dpmpp"),
    ]
    if int8:
        specs += [
            dataclasses.replace(s, name=f"{s.name}_int8", formats=onnx_only, precision="int8", fp32=s.name,
                                description=f"{s.description}; inner convolutions in int8",
                                body=s.body and f"{s.body}_int8")
            for s in specs if s.name in INT8_ARTIFACTS
        ]
    return {s.name: s for s in specs}


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

"""What a bundle holds: every artifact's named inputs and outputs, and inputs to verify it with.

One table drives the exporters (names, dynamic axes), the manifest and the runtime's feeds, so a
name used in a graph cannot drift from the name the runtime feeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from export.manifest import FORMATS
from zoo.diffusion import ddim_timesteps

__all__ = ["IOSpec", "ArtifactSpec", "KINDS", "artifact_specs", "make_inputs", "FORMATS", "ARTIFACT_NAMES", "INT8_ARTIFACTS"]

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
    solver: str | None = None  # "ddim" or "dpmpp_2m" (zoo.diffusion.SOLVERS); None for the denoiser
    body: str | None = None  # a sampler's fused step, the graph its Loop is built around

    @property
    def base(self) -> str:
        """The fp32 artifact this one is derived from (itself for fp32)."""
        return self.name.removesuffix("_int8")

    @property
    def state(self) -> tuple[tuple[str, str], ...]:
        """A fused step's (input, output) pairs carried from one step to the next: x, and the solver's state."""
        return tuple((i, o) for i, o in (("x_t", "x_prev"), ("x0_last", "x0")) if i in [s.name for s in self.inputs])


def artifact_specs(channels: int, int8: bool = False) -> dict[str, ArtifactSpec]:
    """The bundle's artifacts by name; with ``int8``, also the int8 variants (ONNX only)."""
    img = ("batch", channels, "height", "width")
    f32, i64 = "float32", "int64"
    batch = ("batch",)
    noise = (IOSpec("noise", f32, img), IOSpec("eta", f32, ()))
    step_in = (IOSpec("x_t", f32, img), IOSpec("eps", f32, img), IOSpec("alpha_bar_t", f32, batch), IOSpec("alpha_bar_prev", f32, batch))
    fused_in = (IOSpec("x_t", f32, img), IOSpec("t", i64, batch), IOSpec("t_prev", i64, batch))
    loop_in = (IOSpec("x_T", f32, img), IOSpec("timesteps", i64, ("steps",)))
    loop_noise = (IOSpec("noise", f32, ("steps", *img)), IOSpec("eta", f32, ()))
    x_prev = (IOSpec("x_prev", f32, img),)
    # DPM-Solver++(2M) carries the previous x0 prediction and needs the previous step's timestep.
    dpm_state, dpm_out = (IOSpec("x0_last", f32, img),), x_prev + (IOSpec("x0", f32, img),)
    dpm_step_in = step_in[:2] + dpm_state + step_in[2:] + (IOSpec("alpha_bar_last", f32, batch),)
    dpm_fused_in = fused_in[:1] + dpm_state + fused_in[1:] + (IOSpec("t_last", i64, batch),)
    x_0 = (IOSpec("x_0", f32, img),)
    both, onnx_only = ("onnx", "torchscript"), ("onnx",)
    A = ArtifactSpec
    specs = [
        A("denoiser", (IOSpec("x", f32, img), IOSpec("t", i64, batch)), (IOSpec("eps", f32, img),), both, False,
          "the epsilon predictor, time channel inside"),
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
            dataclasses.replace(s, name=f"{s.name}_int8", formats=onnx_only, precision="int8",
                                description=f"{s.description}; inner convolutions in int8",
                                body=s.body and f"{s.body}_int8")
            for s in specs if s.name in INT8_ARTIFACTS
        ]
    return {s.name: s for s in specs}


ARTIFACT_NAMES = tuple(artifact_specs(3))


def make_inputs(
    spec: ArtifactSpec, sizes: dict[str, int], alphas_cumprod: np.ndarray, generator: torch.Generator, eta: float = 0.7
) -> dict[str, torch.Tensor]:
    """Random but valid inputs for ``spec`` at the given axis sizes (batch, height, width, steps).

    Timesteps are spread over [0, T) with ``t_prev = -1`` (the last step) for the last sample and
    ``t_last = -1`` (the first step) for the first; the alpha-bar inputs are the schedule's values
    at those timesteps. With a batch of 3 or more, every solver path is exercised.
    """
    T = len(alphas_cumprod)
    ab = torch.from_numpy(np.array(alphas_cumprod, dtype=np.float64)).float()
    b = sizes["batch"]
    t = torch.randint(0, T, (b,), generator=generator)
    t_prev = t - torch.randint(1, max(2, T // 2), (b,), generator=generator)
    t_prev[-1] = -1
    t_prev = t_prev.clamp(min=-1)
    t_last = t + torch.randint(1, max(2, T // 2), (b,), generator=generator)
    t_last = torch.where(t_last > T - 1, -1, t_last)  # beyond the schedule: no earlier step, first order
    t_last[0] = -1
    values = {
        "t": t,
        "t_prev": t_prev,
        "alpha_bar_t": ab[t],
        "alpha_bar_prev": torch.where(t_prev < 0, 1.0, ab[t_prev.clamp(min=0)]),
        "t_last": t_last,
        "alpha_bar_last": torch.where(t_last < 0, 0.0, ab[t_last.clamp(min=0)]),
        "eta": torch.tensor(eta, dtype=torch.float32),
    }
    if "steps" in sizes:
        values["timesteps"] = torch.from_numpy(ddim_timesteps(T, sizes["steps"], "leading"))
    out = {}
    for io in spec.inputs:
        if io.name in values:
            out[io.name] = values[io.name]
        else:
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in io.dims)
            out[io.name] = torch.randn(shape, generator=generator)
    return out

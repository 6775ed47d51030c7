"""OpenVINO as a peer CPU runtime for a bundle's graphs, so that the runtime choice is measured.

Optional: used by ``diffzoo bench`` when the ``openvino`` package is installed (``pip install
openvino``), skipped with the reason otherwise. It runs the bundle's own verified fused-step and
whole-loop graphs (the same bytes onnxruntime runs), in float32 (``INFERENCE_PRECISION_HINT=f32``:
OpenVINO would otherwise pick bf16 on CPUs that have it, which is another computation). A bench
backend, not a deployment path: the sampler of record is ``runtime.Sampler``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from export.format.graphs import Weights, read_graph
from export.format.manifest import load_manifest
from runtime.feeds import fused_on_host
from runtime.requests import Plan, SampleRequest
from zoo.schedules import make_schedule

__all__ = ["OpenVINOSampler", "openvino_unavailable_reason"]


def openvino_unavailable_reason() -> str | None:
    """None if OpenVINO can run here, else why not (one line)."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"the openvino package is not installed ({e}); pip install openvino"
    return None


class OpenVINOSampler:
    """The bundle's fp32 fused step (per step) or whole loop, compiled by OpenVINO for the CPU."""

    def __init__(self, bundle_dir: str | os.PathLike, threads: int | None = None):
        import openvino as ov

        self.path = Path(bundle_dir)
        self.manifest = load_manifest(self.path)
        self.schedule = make_schedule(**self.manifest["schedule"])
        self.config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self._core = ov.Core()
        self._compiled: dict[str, object] = {}

    def _request(self, artifact: str):
        if artifact not in self._compiled:
            import onnx

            graph = onnx.load_model_from_string(read_graph(self.path, self.manifest, artifact))
            # OpenVINO reads one ONNX protobuf: the graph with its weights put back from the verified file
            data = Weights.of_bundle(self.path, self.manifest).inline(graph).SerializeToString()
            model = self._core.read_model(data, b"")
            self._compiled[artifact] = self._core.compile_model(model, "CPU", self.config).create_infer_request()
        return self._compiled[artifact]

    def plan(self, request: SampleRequest | None = None, /, **settings: Any) -> Plan:
        """A request resolved against the bundle (``SampleRequest.resolve``), as ``runtime.Sampler.plan`` does."""
        return SampleRequest.of(request, **settings).resolve(self.manifest, self.path)

    def run_batch(self, plan: Plan, x_T: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """One batch of ``plan`` in its mode: ``fused`` (the fused step per timestep) or ``loop`` (the whole-loop graph);
        ``noise``: (S, B, C, H, W) for a plan whose solver draws noise."""
        if plan.mode not in ("fused", "loop"):
            raise ValueError(f"the OpenVINO backend runs the fused and loop modes, not {plan.mode!r}")
        req = self._request(plan.artifact)
        cond = plan.conditioning.feeds
        if plan.mode == "loop":
            noise_feed = {"noise": noise, "eta": np.array(plan.eta, np.float32)}
            req.infer({"x_T": x_T, "timesteps": plan.timesteps, **cond,
                       **{n: noise_feed[n] for n in plan.solver.noise_inputs(plan.stochastic)}})
            return req.get_output_tensor(0).data.copy()

        def run(feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
            req.infer(feed)
            return [req.get_tensor(name).data.copy() for name in outputs]

        inputs = [i["name"] for i in self.manifest["artifacts"][plan.artifact]["inputs"]]
        return fused_on_host(run, plan.solver.name, inputs, x_T, plan.timesteps, self.schedule.alphas_cumprod.astype(np.float32),
                             noise=noise, eta=plan.eta, cond=cond)

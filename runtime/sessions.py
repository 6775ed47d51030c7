"""The verified graphs of one bundle and their onnxruntime sessions, on one execution provider.

Every session is built once from the bytes that were hashed (``read_verified``) and whose stamped
identity was checked against the manifest: what is checked is exactly what runs. On the CPU
provider the whole-loop graph is rebuilt here around the CPU-optimised fused step. A CUDA session
that onnxruntime creates without CUDA moves every session of the bundle to the CPU provider (one
warning saying why), or is an error when ``strict``. numpy + onnxruntime + onnx only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from export.format.graphs import Weights, read_graph
from export.format.manifest import BundleError, table_spec
from export.loop import build_sampler_graph, loop_is_bounded
from runtime.providers import CudaOptions, ProviderUnavailableError, session_providers
from runtime.runs import ORT_ERRORS
from zoo.validate import first_line

__all__ = ["Sessions"]

log = logging.getLogger(__name__)

_OPTIMISED_DATA = "fused.data"  # where onnxruntime writes the initializers of its CPU-optimised fused step
_INLINE_BELOW = 1024  # bytes: smaller ones stay in that graph (shape constants, which shape inference reads there)


class Sessions:
    """The sessions of one verified bundle (``manifest``, already hashed by ``load_manifest``) on ``device``."""

    def __init__(self, path: Path, manifest: dict[str, Any], device: str, cuda: CudaOptions, threads: int | None,
                 strict: bool) -> None:
        self.path = path
        self.manifest = manifest
        self.device = device  # "cuda" or "cpu"; "cpu" for good after a fallback
        self.cuda = cuda
        self.threads = threads
        self.strict = strict
        self.optimize_cpu_loop = True  # see _cpu_loop_model; False runs the bundle's sampler.onnx as shipped
        self._sessions: dict[tuple[str, bool], ort.InferenceSession] = {}
        self._weights: Weights | None = None
        # (artifact, batch size) -> the CUDA-graph path's device buffers and bound runs (runtime.modes), dropped with
        # the sessions they were captured on
        self.cuda_graphs: dict[tuple[str, int], tuple] = {}

    @property
    def providers(self) -> list[str]:
        """The execution providers the sessions really use (checked after creation)."""
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "cuda" else ["CPUExecutionProvider"]

    @property
    def artifacts_in_use(self) -> list[str]:
        """The bundle artifacts this sampler has built sessions for so far (what has run, or will)."""
        return sorted({artifact for artifact, _ in self._sessions})

    @property
    def ort_device(self) -> tuple[str, int]:
        return ("cuda", self.cuda.device_id) if self.device == "cuda" else ("cpu", 0)

    @property
    def weights(self) -> Weights:
        """The bundle's weights file, read and verified on first use, shared by every session of this process."""
        if self._weights is None:
            self._weights = Weights.of_bundle(self.path, self.manifest)
        return self._weights

    def onnx_bytes(self, artifact: str) -> bytes:
        """The artifact's ONNX graph as the verified bytes (``export.format.graphs.read_graph``): what is checked is
        exactly what runs."""
        return read_graph(self.path, self.manifest, artifact)

    def _options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: in `step` mode two sessions alternate, and the idle one's
        # spinning threads took the cores from the busy one (~1.6x slower on 2 cores, measured).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            so.intra_op_num_threads = self.threads
        return so

    def _cpu_loop_model(self, artifact: str) -> tuple[bytes, dict[str, np.ndarray]]:
        """The whole-loop graph rebuilt around a CPU-optimised fused step, and the tensors onnxruntime derived for it.

        onnxruntime's CPU layout optimisation (NCHWc blocked convolutions) is applied to a
        top-level graph but not inside a ``Loop`` body, which makes the bundle's ``sampler.onnx``
        ~1.3x slower per step than the fused step on the CPU provider. So the (hash-verified)
        fused step is optimised here, for this machine, and becomes the body of the same Loop.
        onnxruntime writes the optimised copy's initializers to a file beside it: those that are
        weights are pointed back into the verified weights, what it derived from them (reordered
        filters, folded transposes) is handed to the session from memory (``Weights.adopt``), so the
        rebuilt graph holds structure only, whatever the model's size.
        """
        import tempfile

        entry = self.manifest["artifacts"][artifact]
        self.onnx_bytes(artifact)  # not run, but its identity names the body it was built around
        fused = self.onnx_bytes(entry["body"])
        with tempfile.TemporaryDirectory() as tmp:
            so = self._options()
            so.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", _OPTIMISED_DATA)
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                        str(_INLINE_BELOW))
            so.log_severity_level = 3  # its "hardware specific" warning is the point: built here, used here
            try:  # the optimised copy is about the graph's size: a full disk or a file-size limit shows here, named
                Path(so.optimized_model_filepath).write_bytes(fused)
            except OSError as e:
                raise OSError(f"cannot write the CPU-optimised loop body to the temporary file "
                              f"{so.optimized_model_filepath!r}: {e.strerror or e}") from None
            try:
                self.weights.session(fused, so)  # its external initializers from the verified weights
                body = onnx.load(so.optimized_model_filepath, load_external_data=False)
                data = (Path(tmp) / _OPTIMISED_DATA).read_bytes()
            except (*ORT_ERRORS, OSError) as e:
                first = first_line(e, 300)
                raise BundleError(f"the {entry['body']!r} graph of the bundle {str(self.path)!r} cannot be loaded by "
                                  f"onnxruntime, or its CPU-optimised copy not written to {so.optimized_model_filepath!r}: "
                                  f"{first}") from None
        spec = table_spec(self.manifest, artifact)
        if spec is None or spec.body != entry["body"]:
            raise BundleError(f"{artifact!r} of the bundle {str(self.path)!r} is not a whole-loop graph of the artifact "
                              "table: its loop cannot be rebuilt here")
        loop = build_sampler_graph(body, spec)
        derived = self.weights.adopt(loop, _OPTIMISED_DATA, data)
        return loop.SerializeToString(), derived

    def session(self, artifact: str, cuda_graph: bool = False) -> ort.InferenceSession:
        """The session of bundle artifact ``artifact``, built once from its verified bytes.

        If onnxruntime creates it without CUDA on a CUDA sampler, that is an error when ``strict``,
        else the sampler moves to the CPU provider for good (one warning saying why).
        """
        key = (artifact, cuda_graph)
        if key not in self._sessions:
            sess = self._new_session(artifact, cuda_graph)
            if self.device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
                self._fall_back_to_cpu(f"onnxruntime created the {artifact!r} session without CUDA (providers "
                                       f"{sess.get_providers()}); see its log above")
                key, sess = (artifact, False), self._new_session(artifact, False)
            self._sessions[key] = sess
        return self._sessions[key]

    def _new_session(self, artifact: str, cuda_graph: bool) -> ort.InferenceSession:
        loop = self.manifest["artifacts"][artifact]["kind"] == "sampler"
        derived = {}
        if self.device == "cpu" and loop and self.optimize_cpu_loop:
            model, derived = self._cpu_loop_model(artifact)  # its Loop is built here, bounded by the timesteps
        else:
            model = self.onnx_bytes(artifact)
            if loop and not loop_is_bounded(onnx.load_model_from_string(model)):
                raise BundleError(f"the {artifact!r} graph of the bundle {str(self.path)!r} does not bound its Loop by "
                                  "the timesteps it is given: not a graph diffzoo exported; refused")
        try:  # its external initializers from the verified weights, read once per process
            return self.weights.session(model, self._options(), session_providers(self.device, self.cuda, cuda_graph),
                                        derived)
        except ORT_ERRORS as e:  # a graph that passed its hash but not onnxruntime: an unknown op, a bad model
            first = first_line(e, 300)
            raise BundleError(f"the {artifact!r} graph of the bundle {str(self.path)!r} cannot be loaded by onnxruntime: "
                              f"{first}") from None

    def _fall_back_to_cpu(self, why: str) -> None:
        if self.strict:
            raise ProviderUnavailableError(why)
        log.warning("%s: falling back to the CPU provider", why)
        self.device = "cpu"
        self._sessions.clear()
        self.cuda_graphs.clear()

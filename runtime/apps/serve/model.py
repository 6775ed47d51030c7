"""The Triton Python-backend model that serves a bundle: ``execute`` answers each request on its own.

Triton's dynamic batcher hands ``execute`` the requests of one batch. Each is read and checked
alone (``protocol.read_rows``): a bad one gets its own INVALID_ARG error (HTTP 400) and the rest
run. The good rows are grouped by ``Settings``, every group runs as one ``Sampler.run_batch``, and
each request gets its rows back. Runs inside Triton's stub process (``pb_utils``), never imported
by the rest of diffzoo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend stub

from runtime.apps.serve.protocol import OUTPUTS, Rows, Settings, check_memory, read_rows
from runtime.apps.serve.server import SETTINGS_NAME, register_instance
from runtime.noise import row_noise
from runtime.providers import CudaOptions
from runtime.requests import Conditioning, Plan, SampleRequest
from runtime.sampler import load
from zoo.solvers import SOLVERS
from zoo.validate import first_line


class TritonPythonModel:
    """One model instance: a verified bundle's sampler, its sessions built and warmed in ``initialize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        # the server's private settings (server.instance_settings), beside this model's code: never in its served config
        settings = json.loads((Path(args["model_repository"]) / args["model_version"] / SETTINGS_NAME).read_text("utf-8"))
        self.mode = settings["mode"]
        device_id = int(args.get("model_instance_device_id") or 0) if args.get("model_instance_kind") == "GPU" else 0
        cuda = CudaOptions(device_id=device_id, cuda_graph=settings["cuda_graph"])
        provider = settings["provider"]
        self.path = settings["bundle"]
        self.busy = Path(settings["busy_dir"]) / f"{os.getpid()}"  # exists while a batch runs (server.stop)
        # verifies every hash: what the sessions run is exactly what was checked
        self.sampler = load(self.path, provider, strict=provider == "cuda", cuda=cuda, threads=settings["threads"])
        self.log = pb_utils.Logger
        self.log.log_info(f"diffzoo: {args['model_instance_name']} loads {self.path} ({self.mode} mode, "
                          f"{self.sampler.providers[0]})")
        self.plans: dict[Settings, Plan] = {}  # resolved once per instance, not per request
        self._warm_up()
        register_instance(settings["instances_dir"])  # warm: the server watches this process from now on

    def _warm_up(self) -> None:
        """Build and run every session this instance can be asked for, so that ready means ready."""
        for solver in SOLVERS:
            for eta in (0.0, 1.0):
                s = Settings(2, solver, eta, SampleRequest.spacing, False)
                try:
                    plan = self.sampler.plan(s.request(self.mode, self.sampler.precision))
                except ValueError:
                    continue  # not in this bundle (or a deterministic solver with eta > 0)
                self._run(plan, [(Rows(np.zeros(1, np.int64), np.zeros(1, np.int64), [s], {s: plan}, plan.conditioning), 0)])

    def execute(self, requests: list) -> list:
        try:
            self.busy.touch()
        except OSError as e:  # the work directory is gone: the server stops on it (server.problem); answer meanwhile
            self.log.log_warn(f"diffzoo: cannot mark a batch in progress ({e.strerror})")
        try:
            return self._execute(requests)
        finally:
            self.busy.unlink(missing_ok=True)

    def _execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        parsed: dict[int, Rows] = {}
        groups: dict[Settings, list[tuple[int, int]]] = {}
        for i, request in enumerate(requests):
            try:
                rows = read_rows(self.sampler.manifest, self.path, lambda name, r=request: _input(r, name),
                                 self.mode, self.sampler.precision, self.plans)
                check_memory(self.sampler.shape, rows)
            except ValueError as e:
                responses[i] = _error(str(e), pb_utils.TritonError.INVALID_ARG)
                continue
            parsed[i] = rows
            for j, s in enumerate(rows.settings):
                groups.setdefault(s, []).append((i, j))
        results = {i: np.empty((len(rows.seed), *self.sampler.shape), np.float32) for i, rows in parsed.items()}
        for settings, members in groups.items():
            live = [(i, j) for i, j in members if responses[i] is None]
            if not live:
                continue
            try:
                x = self._run(self.plans[settings], [(parsed[i], j) for i, j in live])
            except Exception as e:  # noqa: BLE001  a failed run fails its own requests, never the server
                self.log.log_error(f"diffzoo: a batch of {len(live)} rows ({settings}) failed: {first_line(e, 500)}")
                for i in {i for i, _ in live}:
                    responses[i] = _error(f"the sampler failed on this request's rows: {first_line(e, 300)}",
                                          pb_utils.TritonError.INTERNAL)
                continue
            finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)  # a diverged image fails its own request only
            for (i, j), image, ok in zip(live, x, finite):
                results[i][j] = image
                if not ok and responses[i] is None:
                    responses[i] = _error(f"row {j}: the sampler produced non-finite values (NaN or inf) for this image "
                                          f"({settings.solver}, {settings.steps} steps, eta {settings.eta:g}): the model "
                                          "diverged at these settings; try fewer steps or lower guidance",
                                          pb_utils.TritonError.INTERNAL)
        for i, x in results.items():
            if responses[i] is None:
                responses[i] = self._response(requests[i], x)
        return responses

    def _run(self, plan: Plan, members: list[tuple[Rows, int]]) -> np.ndarray:
        """Rows of one plan (each its own seed, index, label and w) in one session call, or in as few as fit in the
        memory this instance can still get (``Sampler.fit_batch``): a large request is split, not killed."""
        size = self.sampler.fit_batch(plan, len(members), len(members))
        out = []
        for k in range(0, len(members), size):
            part = members[k:k + size]
            x_T, noise = row_noise([(int(r.seed[j]), int(r.index[j])) for r, j in part], self.sampler.shape,
                                   len(plan.timesteps), plan.stochastic)
            cond = Conditioning.join([r.conditioning.rows([j]) for r, j in part])
            out.append(self.sampler.run_batch(plan, x_T, noise, conditioning=cond))  # non-finite rows: failed in _execute
        return np.concatenate(out)

    def _response(self, request, x: np.ndarray):
        wanted = set(request.requested_output_names()) or set(OUTPUTS)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, out.value(x)) for name, out in OUTPUTS.items()
                                                          if name in wanted])

    def finalize(self) -> None:
        self.log.log_info(f"diffzoo: {self.path} unloaded")


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _error(message: str, code) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

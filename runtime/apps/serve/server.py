"""A Triton Inference Server process serving one bundle: its model repository, environment, start and stop.

The ``tritonserver`` binary and its Python backend come from the ``nvidia-pytriton`` wheel; the
model is ours (``runtime.apps.serve.model``), so that a bad request fails alone (PyTriton's own
proxy fails every request of a dynamic batch when one raises). Its stub is linked against
``libpython3.X``: the interpreter's own ``lib`` directory goes on ``LD_LIBRARY_PATH``, and this
interpreter's ``bin`` first on ``PATH``, so that the stub runs this environment's packages.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from runtime.apps.serve.protocol import OUTPUTS, inputs_of
from runtime.requests import check_choices, check_cuda_graph
from zoo.validate import check_int

__all__ = ["ServeOptions", "ServeError", "TritonServer", "triton_unavailable_reason", "model_config", "free_port"]

log = logging.getLogger(__name__)

_TYPES = {"INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8"}
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ServeError(RuntimeError):
    """The server could not be started here (not installed, exited during start-up, never ready)."""


@dataclass(frozen=True)
class ServeOptions:
    """How ``diffzoo serve`` runs a bundle (one place: the CLI flags read these defaults)."""

    host: str = "127.0.0.1"  # loopback: Triton has no authentication, so a public address belongs behind a proxy
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_name: str = "diffzoo"
    max_batch: int = 64  # rows (images) per batch and per request; 1 turns dynamic batching off
    max_queue_delay_ms: float = 5.0  # how long the batcher waits for more rows
    max_queue: int = 256  # requests waiting beyond this are refused at once (HTTP 503); the dynamic batcher's
    instances: int = 1  # model instances (processes) in the server
    provider: str = "auto"  # runtime.providers.PROVIDERS
    mode: str = "loop"  # runtime.requests.MODES
    cuda_graph: bool = False  # fused mode on CUDA: the step replayed as a CUDA graph
    threads: int | None = None  # onnxruntime intra-op threads per instance (default: onnxruntime's)
    exit_timeout_s: int = 30  # on SIGINT/SIGTERM, in-flight requests get this long to finish

    def check(self) -> None:
        """``ValueError`` naming the bad option and what is accepted."""
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        for flag, port in ports.items():
            check_int(flag, port, 1, 65535)
        if len(set(ports.values())) < 3:
            raise ValueError(f"the ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}")
        if not _MODEL_NAME.fullmatch(self.model_name):
            raise ValueError(f"--model-name {self.model_name!r} is invalid: expected letters, digits, '_', '.', '-' "
                             "(up to 64, starting with a letter or digit)")
        check_int("--max-batch", self.max_batch, 1, 65536)
        check_int("--max-queue", self.max_queue, 1)
        if self.max_batch == 1 and self.max_queue != ServeOptions.max_queue:
            raise ValueError(f"--max-queue {self.max_queue} bounds the dynamic batcher's queue, and --max-batch 1 runs without "
                             "one (Triton's default scheduler): use --max-batch 2 or more, or leave --max-queue out")
        check_int("--instances", self.instances, 1, 256)
        if not 0 <= self.max_queue_delay_ms <= 60_000:
            raise ValueError(f"--max-queue-delay-ms {self.max_queue_delay_ms!r} is invalid: expected 0..60000")
        check_choices(mode=self.mode)
        check_cuda_graph(self.cuda_graph, self.mode, "cpu" if self.provider == "cpu" else None)
        if self.threads is not None:
            check_int("--threads", self.threads, 1)


def _pytriton_root() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    return None if spec is None or not spec.submodule_search_locations else Path(list(spec.submodule_search_locations)[0])


def _stub() -> Path | None:
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return None if root is None else root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"


def _libpython_dir() -> Path | None:
    """The directory of this interpreter's shared ``libpython``, which the backend stub links."""
    libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY") or ""
    return Path(libdir) if libdir and name.endswith(".so") and (Path(libdir) / name).exists() else None


def triton_unavailable_reason() -> str | None:
    """Why a Triton server cannot be started from this environment, or None."""
    root = _pytriton_root()
    if root is None or not (root / "tritonserver" / "bin" / "tritonserver").exists():
        return "the Triton server is not installed: pip install nvidia-pytriton (it ships tritonserver and its Python backend)"
    if not _stub().exists():
        return f"nvidia-pytriton has no Python backend stub for Python {sys.version_info.major}.{sys.version_info.minor}"
    if _libpython_dir() is None:
        return (f"this Python ({sys.executable}) has no shared libpython, which Triton's Python backend stub needs: "
                "use an interpreter built with --enable-shared")
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port} ({flag}): {e.strerror}; choose another {flag}") from None


def model_config(manifest: dict[str, Any], bundle: Path, options: ServeOptions, provider: str, busy_dir: Path) -> str:
    """The model's ``config.pbtxt``: its inputs and outputs from ``protocol``, the batcher, instances, the bundle.

    ``busy_dir``: where each instance marks a batch in progress (``TritonServer.stop`` drains them).
    """
    chw = tuple(manifest["data"]["shape"])
    inputs = ",\n".join(
        f'  {{ name: "{i.name}" data_type: {_TYPES[i.datatype]} dims: [ 1 ]{"" if i.required else " optional: true"} }}'
        for i in inputs_of(manifest))
    outputs = ",\n".join(f'  {{ name: "{name}" data_type: {_TYPES[o.datatype]} dims: {o.dims(chw)} }}' for name, o in OUTPUTS.items())
    params = {"bundle": str(bundle.resolve()), "mode": options.mode, "provider": provider,
              "cuda_graph": "1" if options.cuda_graph else "0", "threads": str(options.threads or 0),
              "classes": json.dumps((manifest.get("classes") or {}).get("names") or []), "busy_dir": str(busy_dir)}
    parameters = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items())
    kind = "KIND_GPU" if provider == "cuda" else "KIND_CPU"
    # --max-batch 1: no dynamic batcher at all (Triton's default scheduler, one request per execution). Its
    # dynamic batcher at max_batch_size 1 stalled queued requests by ~0.5 s (p99 0.5-1.1 s at 4-16 clients
    # against 0.04-0.13 s without it, measured): docs/BENCHMARKS.md "Serving".
    batcher = "" if options.max_batch == 1 else f"""dynamic_batching {{
  max_queue_delay_microseconds: {int(options.max_queue_delay_ms * 1000)}
  default_queue_policy {{ max_queue_size: {options.max_queue} }}
}}
"""
    return f"""name: "{options.model_name}"
backend: "python"
max_batch_size: {options.max_batch}
{batcher}instance_group [ {{ count: {options.instances} kind: {kind} }} ]
input [
{inputs}
]
output [
{outputs}
]
parameters [
{parameters}
]
"""


class TritonServer:
    """``tritonserver`` serving one bundle; ``start`` returns once it is ready (sessions built and warmed).

    Use as a context manager: ``stop`` (SIGTERM: in-flight requests finish) always runs, and
    nothing of the server's is left running or on disk after it.
    """

    def __init__(self, bundle: str | os.PathLike, options: ServeOptions | None = None, log_file: IO | None = None,
                 verbose: bool = False):
        self.bundle = Path(bundle)
        self.options = options or ServeOptions()
        self.log_file = log_file  # where the server's own lines go (None: a file in its work directory)
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self.provider: str | None = None
        self._work: Path | None = None  # the model repository, backend directory and busy marks
        self._own_log: IO | None = None  # the log file opened here when no log_file was given
        self._shm_prefix = ""  # Triton's shared-memory regions of this server

    @property
    def url(self) -> str:
        """The HTTP endpoint (KServe v2) as a client reaches it."""
        return f"http://{self._client_host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.options.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.options.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.options.host in ("0.0.0.0", "") else self.options.host

    def start(self, timeout_s: float = 600.0) -> TritonServer:
        from export.format.manifest import load_manifest
        from runtime.providers import resolve_provider

        self.options.check()
        if reason := triton_unavailable_reason():
            raise ServeError(reason)
        o = self.options
        for flag, port in (("--http-port", o.http_port), ("--grpc-port", o.grpc_port), ("--metrics-port", o.metrics_port)):
            _check_port_free(o.host, port, flag)
        manifest = load_manifest(self.bundle)  # hashes checked here for a clear error; each instance checks again
        self.provider = resolve_provider(o.provider, strict=o.provider == "cuda" or o.cuda_graph)
        _remove_orphans()
        self._work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
        (self._work / "owner").write_text(str(os.getpid()))
        self._shm_prefix = f"diffzoo_{self._work.name.rsplit('-', 1)[-1]}_"  # its shared memory, removed by stop()
        try:
            self._launch(manifest)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, manifest: dict[str, Any]) -> None:
        o, work, root = self.options, self._work, _pytriton_root()
        model = work / "models" / o.model_name
        (model / "1").mkdir(parents=True)
        (work / "busy").mkdir()
        (model / "config.pbtxt").write_text(model_config(manifest, self.bundle, o, self.provider, work / "busy"))
        (model / "1" / "model.py").write_text("from runtime.apps.serve.model import TritonPythonModel  # noqa: F401\n")
        backend = work / "backends" / "python"  # Triton's Python backend with the stub of this interpreter's version
        backend.mkdir(parents=True)
        shipped = root / "tritonserver" / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (backend / name).symlink_to(shipped / name)
        (backend / "triton_python_backend_stub").symlink_to(_stub())
        env = dict(os.environ)
        libs = [str(_libpython_dir()), str(root.parent / "nvidia_pytriton.libs"), str(root / "tritonserver" / "external_libs")]
        env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the stub's Python finds this environment
        package_root = str(Path(__file__).resolve().parents[3])  # where `runtime` is importable from
        env["PYTHONPATH"] = ":".join([package_root] + [p for p in env.get("PYTHONPATH", "").split(":") if p])
        host = o.host
        args = [str(root / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={work / 'models'}",
                f"--backend-directory={work / 'backends'}", f"--http-address={host}", f"--http-port={o.http_port}",
                f"--grpc-address={host}", f"--grpc-port={o.grpc_port}", f"--metrics-address={host}",
                f"--metrics-port={o.metrics_port}", f"--exit-timeout-secs={o.exit_timeout_s}",
                f"--allow-gpu-metrics={'true' if self.provider == 'cuda' else 'false'}",
                f"--log-info={'true' if self.verbose else 'false'}", "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}"]
        if self.provider != "cuda":  # no pinned or device memory pools to set up (and no errors about them)
            args += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0"]
        if self.log_file is None:
            self._own_log = open(work / "tritonserver.log", "wb")  # noqa: SIM115  closed in stop()
        out = self.log_file or self._own_log
        log.info("starting %s", " ".join(args))
        self.process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=_die_with_parent)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"the Triton server exited during start-up (status {self.process.returncode}): "
                                 f"{self._log_error()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise ServeError(f"the Triton server was not ready after {timeout_s:.0f} s: {self._log_error()}")

    def ready(self) -> bool:
        """``/v2/health/ready``: every model instance loaded and warmed."""
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _log_error(self) -> str:
        """The server's first error line (its own log file), or where its lines went."""
        if self._own_log is None:
            return "see its log above"
        self._own_log.flush()
        text = (self._work / "tritonserver.log").read_text(errors="replace")
        errors = [line for line in text.splitlines() if line.startswith("E") or "error" in line.lower()]
        return (errors[0] if errors else (text.strip().splitlines() or ["(no output)"])[-1])[:500]

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        return self.process.wait()

    def stop(self) -> None:
        """Stop after in-flight requests: SIGTERM, drain, then nothing of the server's is left running or on disk.

        Triton itself waits (up to ``exit_timeout_s``) for every open HTTP connection, idle
        keep-alive ones included, before it unloads its models; so once nothing is queued or
        running (its metrics, and the instances' busy marks) and the responses had time to leave,
        the process group is ended and its shared memory removed.
        """
        p, self.process = self.process, None
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                self._drain(p)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the backend stubs too, whatever state they are in
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()
            if self._shm_prefix:
                for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                    region.unlink(missing_ok=True)
        if self._own_log is not None:
            self._own_log.close()
            self._own_log = None
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None

    def _drain(self, p: subprocess.Popen, settle_s: float = 0.5) -> None:
        """Return once ``p`` exited, or nothing was queued or running for ``settle_s``, or after ``exit_timeout_s``."""
        deadline = time.monotonic() + self.options.exit_timeout_s
        idle_since = None
        while time.monotonic() < deadline and p.poll() is None:
            idle = not any((self._work / "busy").iterdir()) and self._pending() == 0
            now = time.monotonic()
            idle_since = (idle_since or now) if idle else None
            if idle_since is not None and now - idle_since >= settle_s:
                return
            time.sleep(0.05)
        if p.poll() is None and time.monotonic() >= deadline:
            log.warning("requests were still in flight after %s s (--exit-timeout): stopped", self.options.exit_timeout_s)

    def _pending(self) -> int:
        """Requests queued in the server now (its ``nv_inference_pending_request_count``); 0 if unreadable."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=1) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return 0
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("nv_inference_pending_request_count"))

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


WORK_PREFIX = "diffzoo-serve-"


def _remove_orphans() -> None:
    """Remove the work directories of servers whose ``diffzoo serve`` was killed outright (SIGKILL: no ``stop``).

    Their tritonserver got SIGTERM with its parent (``_die_with_parent``); only the directory is left.
    """
    for work in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*"):
        try:
            os.kill(int((work / "owner").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(work, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours to judge: unreadable, or another user's


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies (Linux), so a killed ``diffzoo serve`` leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

"""A Triton Inference Server process serving one bundle: its model repository, environment, start and stop.

The ``tritonserver`` binary and its Python backend come from the ``nvidia-pytriton`` wheel; the
model is ours (``runtime.apps.serve.model``), so that a bad request fails alone (PyTriton's own
proxy fails every request of a dynamic batch when one raises). Its stub is linked against
``libpython3.X``: the interpreter's own ``lib`` directory goes on ``LD_LIBRARY_PATH``, and this
interpreter's ``bin`` first on ``PATH``, so that the stub runs this environment's packages.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from runtime.apps.serve.protocol import OUTPUTS, inputs_of
from runtime.requests import SampleRequest, check_cuda_graph
from zoo.validate import check_int

__all__ = ["ServeOptions", "ServeError", "TritonServer", "triton_unavailable_reason", "model_config", "free_port", "free_ports",
           "RESTRICTED_APIS", "SETTINGS_NAME", "listen_address", "register_instance"]

log = logging.getLogger(__name__)

_TYPES = {"INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8"}
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Triton's APIs that no diffzoo client uses and that let any local client reach into the server (register its own
# shared-memory regions, load or unload models, rewrite its log and trace settings): closed unless --allow-api opens
# them. A closed API answers only requests carrying a header whose value is a random secret of this server.
RESTRICTED_APIS = ("shared-memory", "model-repository", "logging", "trace")
SETTINGS_NAME = "settings.json"  # the model instances' private settings, beside model.py (never in the served config)


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
    mode: str = SampleRequest.mode  # runtime.requests.MODES
    cuda_graph: bool = False  # fused mode on CUDA: the step replayed as a CUDA graph
    threads: int | None = None  # onnxruntime intra-op threads per instance (default: onnxruntime's)
    exit_timeout_s: int = 30  # on SIGINT/SIGTERM, in-flight requests get this long to finish
    allow_api: tuple[str, ...] = ()  # of RESTRICTED_APIS, the ones left open to every client

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
        SampleRequest(mode=self.mode).check()
        check_cuda_graph(self.cuda_graph, self.mode, "cpu" if self.provider == "cpu" else None)
        if self.threads is not None:
            check_int("--threads", self.threads, 1)
        bad = [a for a in self.allow_api if a not in RESTRICTED_APIS]
        if bad:
            raise ValueError(f"--allow-api {','.join(bad)} is invalid: expected some of {','.join(RESTRICTED_APIS)}")
        listen_address(self.host)


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


def free_ports(n: int, host: str = "127.0.0.1") -> tuple[int, ...]:
    """``n`` distinct ports nobody listens on now (for tests and benchmarks): bound all at once, so never one twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return tuple(s.getsockname()[1] for s in socks)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now; three for one server are ``free_ports(3)`` (two calls here may give the same)."""
    return free_ports(1, host)[0]


def _check_port_free(host: str, port: int, flag: str) -> None:
    host = listen_address(host)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen on {host}:{port} ({flag}): {e.strerror}; choose another {flag}") from None


def listen_address(host: str) -> str:
    """The IP address ``--host`` names, as Triton takes it (a name such as "localhost" resolved here: Triton would
    listen on 255.255.255.255 for it); ``ValueError`` naming it when it resolves to nothing."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"--host {host!r} is invalid: it resolves to no address here ({getattr(e, 'strerror', e)}); "
                         "expected an IP address or a host name") from None
    v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
    return (v4 or [i[4][0] for i in infos])[0]


def _pbtxt_string(value: str) -> str:
    """``value`` as a protobuf text-format string literal (UTF-8 kept as is: its parser reads no \\u escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def model_config(manifest: dict[str, Any], options: ServeOptions, provider: str) -> str:
    """The model's ``config.pbtxt``: its inputs and outputs from ``protocol``, the batcher, instances, the class names
    and the conditioning declaration (``zoo.conditioning``).

    What every client may read (``GET /v2/models/NAME/config``): nothing of the server's machine (the bundle's path,
    the work directory) is in it; the instances read those from their private ``SETTINGS_NAME``.
    """
    chw = tuple(manifest["data"]["shape"])
    inputs = ",\n".join(
        f'  {{ name: "{i.name}" data_type: {_TYPES[i.datatype]} dims: [ 1 ]{"" if i.required else " optional: true"} }}'
        for i in inputs_of(manifest))
    outputs = ",\n".join(f'  {{ name: "{name}" data_type: {_TYPES[o.datatype]} dims: {o.dims(chw)} }}' for name, o in OUTPUTS.items())
    params = {"mode": options.mode,
              "classes": json.dumps((manifest.get("classes") or {}).get("names") or [], ensure_ascii=False),
              "conditioning": json.dumps(manifest["conditioning"])}
    parameters = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: {_pbtxt_string(v)} }} }}' for k, v in params.items())
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


def instance_settings(options: ServeOptions, provider: str, work: Path) -> dict[str, Any]:
    """What each model instance reads from its private ``SETTINGS_NAME``: the bundle, how to run it, where to mark.

    The bundle is the work directory's link to it: the backend stub embeds Python in an ASCII locale, where a
    path with an "é" does not exist; the link's name is plain ASCII, and the kernel follows it.
    """
    return {"bundle": str(work / "bundle"), "mode": options.mode, "provider": provider, "cuda_graph": options.cuda_graph,
            "threads": options.threads, "busy_dir": str(work / "busy"), "instances_dir": str(work / "instances")}


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
        self._copier: threading.Thread | None = None  # copies the server's output to log_file (_copy_log)

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
        host = listen_address(self.options.host)
        if host in ("0.0.0.0", "::"):
            return "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"[{host}]" if ":" in host else host

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
        (work / "instances").mkdir()
        (model / "config.pbtxt").write_text(model_config(manifest, o, self.provider), encoding="utf-8")
        (model / "1" / "model.py").write_text("from runtime.apps.serve.model import TritonPythonModel  # noqa: F401\n")
        (work / "bundle").symlink_to(self.bundle.resolve(), target_is_directory=True)
        (model / "1" / SETTINGS_NAME).write_text(json.dumps(instance_settings(o, self.provider, work)), encoding="utf-8")
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
        host = listen_address(o.host)
        args = [str(root / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={work / 'models'}",
                f"--backend-directory={work / 'backends'}", f"--http-address={host}", f"--http-port={o.http_port}",
                f"--grpc-address={host}", f"--grpc-port={o.grpc_port}", f"--metrics-address={host}",
                f"--metrics-port={o.metrics_port}", f"--exit-timeout-secs={o.exit_timeout_s}",
                f"--allow-gpu-metrics={'true' if self.provider == 'cuda' else 'false'}",
                f"--log-info={'true' if self.verbose else 'false'}", "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}"]
        closed = [a for a in RESTRICTED_APIS if a not in o.allow_api]
        if closed:  # open only to a header nobody is told: closed to every client
            key = f"diffzoo-admin={secrets.token_hex(16)}"
            args += [f"--http-restricted-api={','.join(closed)}:{key}", f"--grpc-restricted-protocol={','.join(closed)}:{key}"]
        if self.provider != "cuda":  # no pinned or device memory pools to set up (and no errors about them)
            args += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0"]
        if self.log_file is None:
            self._own_log = open(work / "tritonserver.log", "wb")  # noqa: SIM115  closed in stop()
        out = self.log_file or self._own_log
        log.info("starting %s", " ".join(args))
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        benign = () if self.provider == "cuda" else _BENIGN_ON_CPU
        self._copier = threading.Thread(target=_copy_log, args=(self.process.stdout, out, benign), daemon=True,
                                        name="tritonserver-log")
        self._copier.start()

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

    def stats(self, images: int = 0, timeout_s: float = 10.0) -> dict[str, Any]:
        """The served model's statistics: ``inferences`` (images), ``executions`` and ``batches`` (batch size ->
        executions), once the batches account for at least ``images`` images.

        Triton counts an execution after it has sent the responses, so a client can hold its last response before
        the batch that made it is counted: a caller that knows how many images were served waits for them.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with urllib.request.urlopen(f"{self.url}/v2/models/{self.options.model_name}/stats", timeout=10) as r:
                s = json.load(r)["model_stats"][0]
            batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])}
            counted = sum(b * n for b, n in batches.items())
            if counted >= images:
                return {"inferences": int(s["inference_count"]), "executions": int(s["execution_count"]), "batches": batches}
            if time.monotonic() > deadline:
                raise ServeError(f"Triton's statistics count {counted} of the {images} images served after {timeout_s:g} s")
            time.sleep(0.01)

    def _log_error(self) -> str:
        """The server's first error line (its own log file), or where its lines went."""
        if self._own_log is None:
            return "see its log above"
        if self.process is not None and self.process.poll() is not None:
            self._copier.join(5)  # every line it wrote is in the file
        self._own_log.flush()
        text = (self._work / "tritonserver.log").read_text(errors="replace")
        errors = [line for line in text.splitlines() if line.startswith("E") or "error" in line.lower()]
        return (errors[0] if errors else (text.strip().splitlines() or ["(no output)"])[-1])[:500]

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        return self.process.wait()

    def problem(self) -> str | None:
        """Why this server can no longer answer every request, or None: the process exited, a model instance died
        (killed, out of memory), or its work directory was removed (a tmp cleaner). Readiness means "able to answer",
        so ``diffzoo serve`` stops on any of these and exits non-zero for an orchestrator to replace it."""
        if self.process is None:
            return "the server is not running"
        if self.process.poll() is not None:
            return f"the Triton server exited on its own (status {self.process.returncode})"
        removed = f"its work directory {str(self._work)!r} was removed (a tmp cleaner?): set TMPDIR to a directory none cleans"
        if self._work is None or not (self._work / "instances").is_dir():
            return removed
        for mark in (self._work / "instances").iterdir():  # one per instance, written once it is warm
            if not _alive(mark):  # or the directory went while it was read: then that is the problem
                dead = f"model instance process {mark.name} died (killed, or out of memory)"
                return dead if (self._work / "instances").is_dir() else removed
        return None

    def watch(self, interval_s: float = 0.25) -> str:
        """Block until ``problem`` finds one; returns it."""
        while (why := self.problem()) is None:
            time.sleep(interval_s)
        return why

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
            self._copier.join(5)
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
            busy = self._work / "busy"
            idle = not (busy.is_dir() and any(busy.iterdir())) and self._pending() == 0  # unknown (None) is not idle
            now = time.monotonic()
            idle_since = (idle_since or now) if idle else None
            if idle_since is not None and now - idle_since >= settle_s:
                return
            time.sleep(0.05)
        if p.poll() is None and time.monotonic() >= deadline:
            unknown = " (its queue could not be read: metrics unavailable)" if self._pending() is None else ""
            log.warning("requests were still in flight after %s s (--exit-timeout)%s: stopped", self.options.exit_timeout_s,
                        unknown)

    def _pending(self) -> int | None:
        """Requests queued in the server now (its ``nv_inference_pending_request_count``); None if unreadable.

        Unreadable is not empty: the drain then waits for the busy marks and ``exit_timeout_s``.
        """
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=1) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("nv_inference_pending_request_count"))

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


WORK_PREFIX = "diffzoo-serve-"
# What tritonserver logs at start on a machine without a GPU, as an error, though nothing is wrong: left out of the
# log when the server runs on the CPU provider.
_BENIGN_ON_CPU = (b"CudaDriverHelper has not been initialized",)


def _copy_log(source: IO[bytes], sink: IO, benign: tuple[bytes, ...]) -> None:
    """The server's output lines to ``sink`` as they come, but for the ``benign`` ones; ends with the process."""
    out = getattr(sink, "buffer", sink)  # sys.stderr takes bytes through its buffer
    for line in iter(source.readline, b""):  # read to the end whatever happens: a full pipe would stall the server
        if out is None or any(b in line for b in benign):
            continue
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):  # the sink was closed (stop() closes its own log last): nothing left to keep
            out = None
    source.close()


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


def _alive(mark: Path) -> bool:
    """Whether the process an instance mark names (``<pid>``, holding its start time) is still that process, running
    (a killed stub stays a zombie until tritonserver reaps it, which it may never do)."""
    try:
        state, started = _stat(int(mark.name))
        return started == mark.read_text() and state not in ("Z", "X")
    except (OSError, ValueError):
        return not mark.exists() and mark.parent.is_dir()  # removed between listing and reading: not a death


def _stat(pid: int) -> tuple[str, str]:
    """A process's state and start time (``/proc/PID/stat`` fields 3 and 22): the start time and the pid name one
    process, never a reused pid."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def register_instance(instances_dir: str | os.PathLike) -> None:
    """In a model instance, once it is warm: its mark for ``TritonServer.problem`` (pid, start time)."""
    pid = os.getpid()
    (Path(instances_dir) / str(pid)).write_text(_stat(pid)[1])


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies (Linux), so a killed ``diffzoo serve`` leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

"""Serving: a real Triton server (nvidia-pytriton's tritonserver) on 127.0.0.1 and free ports, always stopped.

Each test's requests are bounded in number and time (client timeouts); the fixtures stop their
server whatever happens, and a test checks that nothing of it is left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import runtime
from conftest import COND_NAMES, SOLVER_RUNS
from runtime.apps.serve.client import Client, ServerError
from runtime.apps.serve.protocol import read_rows
from runtime.apps.serve.server import ServeOptions, TritonServer, free_port, free_ports, triton_unavailable_reason
from zoo.images import to_uint8

pytestmark = pytest.mark.skipif(triton_unavailable_reason() is not None, reason=str(triton_unavailable_reason()))


def _options(**kw) -> ServeOptions:
    http, grpc, metrics = free_ports(3)  # three distinct ports (two free_port() calls may give the same one)
    return ServeOptions(http_port=http, grpc_port=grpc, metrics_port=metrics, **{"exit_timeout_s": 20, **kw})


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    with open(tmp_path_factory.mktemp("log") / "triton.log", "wb") as log, \
            TritonServer(bundles["residual"].path, _options(max_batch=16), log_file=log) as s:
        yield s


@pytest.fixture(scope="module")
def cond_server(cond_bundle, tmp_path_factory):
    with open(tmp_path_factory.mktemp("log") / "triton.log", "wb") as log, \
            TritonServer(cond_bundle.path, _options(max_batch=8), log_file=log) as s:
        yield s


def test_served_images_are_sample_s_images_and_mixed_settings_are_grouped(server, bundles):
    """One request mixing a setting of every solver run (the table's, eta 0.6 where a solver takes eta), each with its
    own step count: each group equals `Sampler.sample` bit for bit, and image = to_uint8."""
    sampler = runtime.load(bundles["residual"].path, "cpu")
    groups = [dict(steps=5 + k, solver=solver, eta=eta) for k, (solver, eta) in enumerate(SOLVER_RUNS)]
    n = 2 * len(groups)
    rows = {"seed": 7, "index": np.arange(n), "steps": [g["steps"] for g in groups for _ in range(2)],
            "solver": [g["solver"] for g in groups for _ in range(2)], "eta": [g["eta"] for g in groups for _ in range(2)]}
    with Client(server.url) as c:
        x = c.sample(rows, output="sample")
        img = c.sample(rows, output="image")
    assert x.dtype == np.float32 and x.shape == (n, *sampler.shape)
    for k, g in enumerate(groups):
        want = sampler.sample(2, num_steps=g["steps"], seed=7, eta=g["eta"], solver=g["solver"], start=2 * k)
        np.testing.assert_array_equal(x[2 * k:2 * k + 2], want)
    np.testing.assert_array_equal(img, to_uint8(x))
    assert img.dtype == np.uint8 and img.shape == (n, 12, 12, 3)


def test_rows_of_concurrent_requests_run_in_one_session_call(bundles, tmp_path):
    """8 one-row requests at once, a long batching delay: Triton executes them as one batch of 8 (its statistics),
    and each row is still its own (seed, index) image."""
    with open(tmp_path / "log", "wb") as log, \
            TritonServer(bundles["residual"].path, _options(max_batch=8, max_queue_delay_ms=2000), log_file=log) as s:
        out: dict[int, np.ndarray] = {}

        def one(k: int):
            with Client(s.url) as c:
                out[k] = c.sample({"seed": 9, "index": [k], "steps": 5}, output="sample")[0]

        threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = s.stats(images=8)
    assert stats == {"inferences": 8, "executions": 1, "batches": {8: 1}}, stats
    want = runtime.load(bundles["residual"].path, "cpu").sample(8, num_steps=5, seed=9)
    np.testing.assert_allclose(np.stack([out[k] for k in range(8)]), want, rtol=0, atol=1e-6)  # any row order


def test_grpc_requests_are_served_as_http_ones(server, bundles):
    """KServe v2 over gRPC (Triton's own endpoint) gives the same images and the same 400s."""
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        def infer(steps: int):
            inputs = []
            for name, value in (("seed", 2), ("index", 3), ("steps", steps)):
                tensor = grpc.InferInput(name, [1, 1], "INT64")
                tensor.set_data_from_numpy(np.full((1, 1), value, np.int64))
                inputs.append(tensor)
            return client.infer("diffzoo", inputs, outputs=[grpc.InferRequestedOutput("sample")]).as_numpy("sample")

        want = runtime.load(bundles["residual"].path, "cpu").sample(1, num_steps=6, seed=2, start=3)
        np.testing.assert_array_equal(infer(6), want)
        with pytest.raises(InferenceServerException, match="num_steps=0") as e:
            infer(0)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()


def test_a_request_larger_than_the_max_batch_is_split_by_the_client(server, bundles):
    with Client(server.url) as c:
        x = c.sample({"seed": 1, "index": np.arange(3, 23), "steps": 4}, output="sample")
    want = runtime.load(bundles["residual"].path, "cpu").sample(20, num_steps=4, seed=1, start=3, batch_size=16)
    np.testing.assert_allclose(x, want, atol=1e-5)  # batched 16 + 4 by the client, 16 + 4 here
    assert len(x) == 20


def test_conditional_rows_carry_their_label_and_guidance(cond_server, cond_bundle):
    sampler = runtime.load(cond_bundle.path, "cpu")
    labels, w = [0, 2, 1, 2], [1.0, 3.0, 0.0, 1.5]
    with Client(cond_server.url) as c:
        assert c.class_names == list(COND_NAMES)
        x = c.sample({"seed": 4, "index": np.arange(4), "steps": 5, "label": labels, "guidance": w}, output="sample")
        null = c.sample({"seed": 4, "index": np.arange(2), "steps": 5}, output="sample")
    np.testing.assert_array_equal(x, sampler.sample(4, num_steps=5, seed=4, labels=labels, guidance=w))
    np.testing.assert_array_equal(null, sampler.sample(2, num_steps=5, seed=4))


def _raw_infer(url: str, inputs: dict[str, tuple[np.ndarray, str]], timeout: float = 60):
    import tritonclient.http as http

    c = http.InferenceServerClient(url.split("://")[1], network_timeout=timeout, connection_timeout=timeout)
    try:
        tensors = []
        for name, (arr, dtype) in inputs.items():
            t = http.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            tensors.append(t)
        return c.infer("diffzoo", tensors)
    finally:
        c.close()


def _col(v, dtype=np.int64, n=1):
    return np.full((n, 1), v, dtype=dtype)


def _s(v: str, n=1):
    return np.array([[v.encode()]] * n, dtype=object)


GOOD = {"seed": (_col(3), "INT64"), "index": (_col(1), "INT64"), "steps": (_col(4), "INT64")}
# bad request -> a piece of the error message that names what was wrong
BAD = [
    ({**GOOD, "seed": (_col(3, np.int32), "INT32")}, "seed"),  # wrong datatype
    ({**GOOD, "eta": (_col(1, np.int64), "INT64")}, "eta"),
    ({"seed": (_col(3), "INT64"), "steps": (_col(4), "INT64")}, "index"),  # a missing input
    ({**GOOD, "index": (np.zeros((1, 2), np.int64), "INT64")}, "index"),  # wrong shape
    ({**GOOD, "index": (_col(-1), "INT64")}, "index"),
    ({**GOOD, "solver": (_s("euler"), "BYTES")}, "euler"),
    ({**GOOD, "spacing": (_s("log"), "BYTES")}, "log"),
    ({**GOOD, "steps": (_col(0), "INT64")}, "num_steps=0"),
    ({**GOOD, "steps": (_col(5000), "INT64")}, "num_steps=5000"),
    ({**GOOD, "eta": (_col(1.5, np.float32), "FP32")}, "1.5"),
    ({**GOOD, "eta": (_col(0.5, np.float32), "FP32"), "solver": (_s("dpmpp_2m"), "BYTES")}, "eta"),
    ({**GOOD, "eta": (_col(0.5, np.float32), "FP32"), "solver": (_s("euler_ancestral"), "BYTES")}, "sets its own noise"),
    ({**GOOD, "label": (_col(10), "INT64"), "guidance": (_col(1.0, np.float32), "FP32")}, "label 10"),
    ({**GOOD, "label": (_col(1), "INT64"), "guidance": (_col(np.nan, np.float32), "FP32")}, "nan"),
    ({**GOOD, "label": (_col(1), "INT64"), "guidance": (_col(3e38, np.float32), "FP32")}, "expected 0..100"),  # absurd
    ({**GOOD, "guidance": (_col(2.0, np.float32), "FP32")}, "guidance"),  # guidance without a label
    ({k: (np.repeat(a, 9, axis=0), d) for k, (a, d) in GOOD.items()}, "<= 8"),  # more rows than --max-batch 8: Triton refuses them
]


def test_bad_requests_get_400_naming_the_value_and_good_ones_batched_with_them_succeed(cond_server, cond_bundle):
    """Bad and good requests interleaved from several threads: every bad one 400, every good one right."""
    want = runtime.load(cond_bundle.path, "cpu").sample(1, num_steps=4, seed=3, start=1)
    errors: list[str] = []
    results: list[tuple[str, object]] = []

    def worker(k: int):
        for j in range(len(BAD)):
            bad, named = BAD[(j + k) % len(BAD)]
            try:
                _raw_infer(cond_server.url, bad)
                errors.append(f"accepted a bad request naming {named!r}")
            except Exception as e:  # noqa: BLE001  tritonclient's InferenceServerException
                results.append(("bad", (e.status(), named, e.message())))
            good = _raw_infer(cond_server.url, GOOD).as_numpy("sample")
            results.append(("good", good))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and not errors
    bad = [r for kind, r in results if kind == "bad"]
    good = [r for kind, r in results if kind == "good"]
    assert len(bad) == len(good) == 4 * len(BAD)
    for status, named, message in bad:
        assert status == "400", (named, status, message)
        assert named.lower() in message.lower(), (named, message)
    for x in good:
        np.testing.assert_array_equal(x, want)
    assert cond_server.ready()


def test_past_max_queue_a_request_is_refused_at_once(bundles, tmp_path):
    """--max-queue 1, batches of 2: of 12 concurrent slow requests some are refused (503), the rest served."""
    with open(tmp_path / "log", "wb") as log, TritonServer(bundles["unet"].path, _options(max_batch=2, max_queue=1), log_file=log) as s:
        outcomes: list[object] = []

        def one(k: int):
            try:
                _raw_infer(s.url, {**GOOD, "steps": (_col(1000), "INT64"), "index": (_col(k), "INT64")})
                outcomes.append("ok")
            except Exception as e:  # noqa: BLE001
                outcomes.append((e.status(), e.message()))

        threads = [threading.Thread(target=one, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        refused = [o for o in outcomes if o != "ok"]
        assert refused and len(refused) < 12, outcomes
        assert all(status == "503" and "queue" in message.lower() for status, message in refused), refused
        assert s.ready()


def test_a_client_that_times_out_does_not_wedge_the_server(server):
    with Client(server.url, timeout_s=0.05) as c, pytest.raises(ServerError, match="did not answer within 0.05 s"):
        c.sample({"seed": 0, "index": np.arange(16), "steps": 1000, "eta": 1.0})
    with Client(server.url) as c:
        assert c.sample({"seed": 0, "index": [0], "steps": 2}).shape == (1, 12, 12, 3)


def test_client_errors_are_one_line(server):
    with Client(server.url) as c, pytest.raises(ServerError, match="400.*num_steps=0") as e:
        c.sample({"seed": 0, "index": [0], "steps": 0})
    assert e.value.status == 400 and "\n" not in str(e.value)
    with Client(f"http://127.0.0.1:{free_port()}") as c, pytest.raises(ConnectionError, match="cannot reach"):
        c.sample({"seed": 0, "index": [0]})
    with Client(f"http://{server.grpc_url}") as c, pytest.raises(ConnectionError, match="did not answer as a KServe v2 HTTP"):
        c.sample({"seed": 0, "index": [0]})  # the gRPC port: something answers, not in HTTP/1.1
    with Client(server.url) as c, pytest.raises(AttributeError, match="a bug of ours"):  # not "not a KServe v2 server"
        c._client.get_model_config = lambda *a, **k: (_ for _ in ()).throw(AttributeError("a bug of ours"))
        c.config


def _diffzoo(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.apps.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


class _ServeCli:
    """`diffzoo serve` as a user runs it, in its own process: ready once it prints its "serving" line."""

    def __init__(self, bundle, env=None, args=()):
        self.o = _options()
        o = self.o
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.apps.cli", "serve", str(bundle), "--http-port", str(o.http_port),
                                      "--grpc-port", str(o.grpc_port), "--metrics-port", str(o.metrics_port), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.url = f"http://127.0.0.1:{o.http_port}"

    def __enter__(self):
        line = self.proc.stdout.readline()  # printed once ready
        if not line.startswith("serving") or self.url not in line:
            self.__exit__()
            pytest.fail(f"diffzoo serve did not start: {line!r} {self.proc.stderr.read()}")
        return self

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out, err

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_cli_serve_request_and_a_clean_stop_on_sigterm(cond_bundle, tmp_path):
    """`diffzoo serve` ready after warm-up; `diffzoo request` writes sample's bytes; SIGTERM lets an in-flight
    request finish, exits 0 and leaves no process of the server behind."""
    with _ServeCli(cond_bundle.path) as served:
        url = served.url
        assert TritonServer(cond_bundle.path, served.o).ready()
        r = _diffzoo("request", url, "--n", 2, "--class", "all", "--guidance", 2, "--steps", 6, "--out", tmp_path / "r.png")
        s = _diffzoo("sample", cond_bundle.path, "--n", 2, "--class", "all", "--guidance", 2, "--steps", 6, "--out", tmp_path / "s.png")
        assert r.returncode == 0 and s.returncode == 0, r.stderr + s.stderr
        assert (tmp_path / "r.png").read_bytes() == (tmp_path / "s.png").read_bytes()
        bad = _diffzoo("request", url, "--n", 2, "--class", "seven", "--out", tmp_path / "b.png")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "seven" in bad.stderr
        assert not (tmp_path / "b.png").exists()
        inflight: dict[str, object] = {}

        def slow():
            with Client(url) as c:
                inflight["x"] = c.sample({"seed": 1, "index": np.arange(8), "steps": 1000, "eta": 1.0}, output="sample")

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)
        status, out, err = served.stop()
        t.join(60)
        assert status == 0 and "stopped" in out, (out, err)
        assert inflight["x"].shape == (8, 1, 8, 8) and np.isfinite(inflight["x"]).all()
        ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
        left = [p for p in ps.splitlines() if f"--http-port={served.o.http_port}" in p and not p.startswith("Z")]
        assert not left, left


def test_cli_serve_stops_cleanly_on_ctrl_c(bundles):
    with _ServeCli(bundles["residual"].path) as served:
        served.proc.send_signal(signal.SIGINT)
        out, err = served.proc.communicate(timeout=120)
        assert served.proc.returncode == 0 and "stopped" in out, (out, err)
        assert not TritonServer(bundles["residual"].path, served.o).ready()


def test_a_killed_serve_takes_its_server_with_it_and_the_next_one_tidies_up(bundles, tmp_path):
    import tempfile

    with _ServeCli(bundles["residual"].path) as served:
        work = [d for d in Path(tempfile.gettempdir()).glob("diffzoo-serve-*")
                if (d / "owner").is_file() and (d / "owner").read_text() == str(served.proc.pid)]
        assert len(work) == 1
        served.proc.kill()  # SIGKILL: no clean-up of its own
        served.proc.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
            if not [p for p in ps.splitlines() if f"--http-port={served.o.http_port}" in p and not p.startswith("Z")]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("tritonserver outlived its killed parent")
        assert work[0].exists()
    with open(tmp_path / "log", "wb") as log, TritonServer(bundles["residual"].path, _options(), log_file=log):
        assert not work[0].exists()


def test_cli_serve_refuses_bad_options_in_one_line(bundles, tmp_path):
    busy = free_port()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen()
        cases = [
            (["--http-port", busy], f"{busy}"),
            (["--mode", "step", "--cuda-graph"], "--mode fused"),
            (["--model-name", "a/b"], "a/b"),
            (["--http-port", 9000, "--grpc-port", 9000], "differ"),
            (["--allow-api", "shared-memory,everything"], "--allow-api everything is invalid"),
            (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' is invalid"),
        ]
        for args, named in cases:
            r = _diffzoo("serve", bundles["residual"].path, *args)
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and named in r.stderr, (args, r.stderr)
    r = _diffzoo("serve", tmp_path / "missing")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing" in r.stderr, r.stderr
    r = _diffzoo("request", f"http://127.0.0.1:{free_port()}", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot reach" in r.stderr, r.stderr


def test_bench_serve_measures_every_configuration_and_concurrency(bundles):
    """`bench --serve`, bounded: every server configuration at each concurrency, the batches Triton formed and
    offline sampling at them, the key ratios printed and no verdict (those live in docs/BENCHMARKS.md)."""
    from runtime.apps.bench.serving import CONFIGS, DYNAMIC, format_serve_bench, run_serve_bench, serve_ratios

    res = run_serve_bench(bundles["residual"].path, steps=2, requests=8, rounds=1, concurrencies=(1, 4), threads=1)
    points = {(p["batching"], p["concurrency"]): p for p in res["points"]}
    assert set(points) == {(name, c) for name in CONFIGS for c in (1, 4)}
    for (name, c), p in points.items():
        assert p["images_per_s"] > 0 and p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
        assert sum(b * n for b, n in p["batches"].items()) == max(8, 4 * c)  # every request, in batches Triton formed
        assert (p["offline_images_per_s"] is not None) == (name in DYNAMIC)
    assert set(points[("off", 4)]["batches"]) == {1}  # batching off: one request per execution
    ratios = dict(serve_ratios(res, at=4))
    assert len(ratios) == 3 * len(DYNAMIC) and all(v > 0 for v in ratios.values())
    assert ratios["dynamic: batching / off, concurrency 4"] == (points[("dynamic", 4)]["images_per_s"]
                                                                / points[("off", 4)]["images_per_s"])
    assert "MET" not in format_serve_bench(res)  # measured here, judged in docs/BENCHMARKS.md


def test_read_rows_checks_every_row_before_any_runs(bundles):
    """The request check alone (no server): the first bad row is named, with its value."""
    from export.format.manifest import load_manifest

    manifest = load_manifest(bundles["residual"].path)
    inputs = {"seed": np.array([[1], [2]]), "index": np.array([[0], [1]]), "steps": np.array([[10], [0]])}
    with pytest.raises(ValueError, match=r"row 1: num_steps=0"):
        read_rows(manifest, "b", inputs.get)
    rows = read_rows(manifest, "b", {**inputs, "steps": np.array([[10], [12]])}.get)
    assert [s.steps for s in rows.settings] == [10, 12] and rows.conditioning.labels is None
    assert [len(rows.plans[s].timesteps) for s in rows.settings] == [10, 12]
    with pytest.raises(ValueError, match="labels and guidance need a class-conditional bundle"):
        read_rows(manifest, "b", {**inputs, "steps": None, "label": np.array([[1], [1]])}.get)


def test_sample_serve_and_request_run_without_torch(bundles, tmp_path):
    """The deploy-only install: with torch (and the rest of the torch extra) unimportable, sample works and
    train says in one line what to install."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnxscript', 'safetensors', 'sklearn', 'torchmetrics'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(Path(runtime.__file__).parents[1])])}
    r = _diffzoo("sample", bundles["residual"].path, "--n", 2, "--steps", 3, "--out", tmp_path / "a.npy", env=env)
    assert r.returncode == 0, r.stderr
    want = runtime.load(bundles["residual"].path, "cpu").sample(2, num_steps=3)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), want)
    for args in (["train", "--steps", 1, "--out", tmp_path / "run"], ["bench", "--allocator", "--repeats", 1]):
        r = _diffzoo(*args, env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pip install -e '.[torch]' in the diffzoo checkout" in r.stderr, r.stderr
    with _ServeCli(bundles["residual"].path, env=env) as served:  # its model instances inherit the blocked environment
        r = _diffzoo("request", served.url, "--n", 2, "--steps", 3, "--out", tmp_path / "b.npy", env=env)
        assert r.returncode == 0, r.stderr
        assert served.stop()[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), want)


# --- round 4 (issue 28), 2: a server that cannot be taken down ----------------------------------------------

def _work_dir(pid: int) -> Path:
    import tempfile

    work = [d for d in Path(tempfile.gettempdir()).glob("diffzoo-serve-*")
            if (d / "owner").is_file() and (d / "owner").read_text() == str(pid)]
    assert len(work) == 1, work
    return work[0]


def _left_running(port: int) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
    return [p for p in ps.splitlines() if f"--http-port={port}" in p and not p.startswith("Z")]


def test_apis_no_client_needs_are_closed_and_the_config_names_no_path(server, bundles, tmp_path):
    import urllib.error
    import urllib.request

    def status(url, data=None):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    for path, body in (("v2/systemsharedmemory/status", None), ("v2/systemsharedmemory/region/x/register", b"{}"),
                       ("v2/cudasharedmemory/status", None), ("v2/repository/index", b"{}"),
                       ("v2/repository/models/diffzoo/unload", b"{}"), ("v2/logging", None), ("v2/trace/setting", None)):
        code, text = status(f"{server.url}/{path}", body)
        assert code == 403 and "restricted" in text, (path, code, text)
    code, config = status(f"{server.url}/v2/models/diffzoo/config")
    assert code == 200 and str(bundles["residual"].path) not in config and "/tmp" not in config and "busy" not in config
    with Client(server.url) as c:  # still serving
        assert c.sample({"seed": 0, "index": [0], "steps": 2}).shape == (1, 12, 12, 3)
    with open(tmp_path / "log", "wb") as log, \
            TritonServer(bundles["residual"].path, _options(allow_api=("shared-memory",)), log_file=log) as opened:
        assert status(f"{opened.url}/v2/systemsharedmemory/status")[0] == 200  # asked for: open
        assert status(f"{opened.url}/v2/logging")[0] == 403


def test_grpc_shared_memory_is_closed(server):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    c = grpc.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            c.register_system_shared_memory("mine", "/diffzoo_probe", 64)
        assert c.is_server_ready()
    finally:
        c.close()


@pytest.mark.parametrize("kill", ["instance", "work directory"])
def test_a_server_that_cannot_answer_stops_and_exits_non_zero(bundles, kill):
    """A killed model instance (or the work directory removed by a tmp cleaner): `diffzoo serve` stops its server,
    says why in one line and exits 1, for an orchestrator to replace it; nothing is left running."""
    import shutil

    instances = 2 if kill == "instance" else 1  # one of two killed: the other would answer, every other request fail
    with _ServeCli(bundles["residual"].path, args=["--instances", instances]) as served:
        work = _work_dir(served.proc.pid)
        marks = sorted((work / "instances").iterdir())
        assert len(marks) == instances  # every instance warm and watched
        if kill == "instance":
            os.kill(int(marks[0].name), signal.SIGKILL)
        else:
            shutil.rmtree(work)
        out, err = served.proc.communicate(timeout=120)
        assert served.proc.returncode == 1, (out, err)
        why = "model instance process" if kill == "instance" else "work directory"
        line = [x for x in err.splitlines() if x.startswith("diffzoo serve: error:")]
        assert len(line) == 1 and why in line[0] and "stopping so that it can be replaced" in line[0], err
        assert not TritonServer(bundles["residual"].path, served.o).ready()
        assert not _left_running(served.o.http_port)


def test_localhost_and_a_non_ascii_bundle_path_are_served(cond_bundle, tmp_path):
    import shutil

    path = tmp_path / "bündel-é"
    shutil.copytree(cond_bundle.path, path)
    with open(tmp_path / "log", "wb") as log, TritonServer(path, _options(host="localhost"), log_file=log) as s:
        assert s.url.startswith("http://127.0.0.1:")  # Triton listens where the name resolves, not on 255.255.255.255
        with Client(s.url) as c:
            assert c.class_names == list(COND_NAMES)
            got = c.sample({"seed": 1, "index": [0, 1], "steps": 3, "label": [0, 2]}, output="sample")
    np.testing.assert_array_equal(got, runtime.load(path, "cpu").sample(2, num_steps=3, seed=1, labels=[0, 2]))
    with pytest.raises(ValueError, match=r"--host 'no-such-host.invalid' is invalid: it resolves to no address"):
        _options(host="no-such-host.invalid").check()


def test_a_diverging_row_fails_its_own_request_only(cond_bundle, tmp_path):
    """Class 1's embedding made NaN: its rows come out NaN. Batched with a good request, the diverging request
    gets a 500 naming its row, the good one its images."""
    import onnx
    from onnx import numpy_helper

    from conftest import replace_graph

    from export.format.graphs import Weights

    weights = Weights.of_file(cond_bundle.path / "weights.safetensors")

    def blow_up(model):  # the forged graph holds this one tensor itself, NaN in class 1's row
        for init in model.graph.initializer:
            if init.name.endswith("class_emb.weight"):  # the network's, named under network/ in a fused step
                w = weights.view(init).copy()
                w[1] = np.nan  # class 1's rows diverge, the null class's and class 0's do not
                init.CopyFrom(numpy_helper.from_array(w, init.name))
        return model

    path = replace_graph(cond_bundle.path, tmp_path, "fused_step.onnx", blow_up)
    results: dict[str, object] = {}
    with open(tmp_path / "log", "wb") as log, TritonServer(path, _options(max_batch=8, max_queue_delay_ms=300), log_file=log) as s:
        def send(name, label):
            try:
                with Client(s.url) as c:
                    results[name] = c.sample({"seed": 2, "index": [0, 1], "steps": 3, "label": [0, label], "guidance": 1.5},
                                             output="sample")
            except ServerError as e:
                results[name] = e

        threads = [threading.Thread(target=send, args=a) for a in (("good", 0), ("bad", 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert s.ready()
    want = runtime.load(cond_bundle.path, "cpu").sample(2, num_steps=3, seed=2, labels=[0, 0], guidance=1.5)
    np.testing.assert_array_equal(results["good"], want)
    bad = results["bad"]
    assert isinstance(bad, ServerError) and bad.status == 500 and "row 1: the sampler produced non-finite values" in str(bad)


def test_request_refuses_bad_urls_and_seeds_and_names_a_timeout(server, tmp_path):
    for url, named in (("ftp://127.0.0.1:8000", "ftp:// is not served"), ("http://127.0.0.1:port", "port is not a number"),
                       ("http://", "expected http://HOST:PORT"), ("http://127.0.0.1:8000/v2/models", "expected http://HOST:PORT")):
        r = _diffzoo("request", url, "--out", tmp_path / "x.png")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and named in r.stderr, (url, r.stderr)
    r = _diffzoo("request", server.url, "--seed", 2**64, "--out", tmp_path / "x.png")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "seed=18446744073709551616 is invalid" in r.stderr, r.stderr
    r = _diffzoo("request", server.url, "--n", 64, "--steps", 1000, "--eta", 1, "--timeout", 1, "--out", tmp_path / "x.png")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "did not answer within 1 s" in r.stderr, r.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_stop_whose_queue_cannot_be_read_waits_for_the_exit_timeout(tmp_path, caplog):
    """Unreadable metrics are not an empty queue: the drain keeps waiting (here to --exit-timeout), and says why."""
    server = TritonServer(tmp_path, _options(exit_timeout_s=2))  # nothing listens on its metrics port
    server._work = tmp_path
    assert server._pending() is None
    with subprocess.Popen(["sleep", "30"]) as busy:  # a server still running after SIGTERM
        try:
            with caplog.at_level("WARNING", logger="runtime.apps.serve.server"):
                server._drain(busy)
            assert busy.poll() is None
        finally:
            busy.kill()
    assert "requests were still in flight after 2 s (--exit-timeout) (its queue could not be read: metrics unavailable)" \
        in caplog.text

"""``diffzoo bench --serve``: a served bundle under load, against batching off and against offline sampling.

Closed-loop clients (one image per request, each client sends its next request when the last is
answered) at each concurrency, on loopback, a bounded number of requests each. Per point: images/s,
latency p50/p95/p99, and the batch sizes Triton formed (its model statistics); the same load on the
same server with dynamic batching off (``--max-batch 1``) and with two single-threaded instances
(``CONFIGS``); and ``Sampler.sample`` in this process at the batch size the server formed: what
serving costs over offline sampling. Rounds alternate the
configurations so that the machine's noise falls on all of them. Nothing here asserts a timing.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.apps.serve.client import Client
from runtime.apps.serve.server import ServeOptions, TritonServer, free_ports
from runtime.requests import SampleRequest

__all__ = ["CONCURRENCIES", "run_serve_bench", "format_serve_bench", "serve_ratios"]

CONCURRENCIES = (1, 4, 16, 64)
# name -> the server's options: the default server, the same with two single-threaded instances (each batch on
# its own core; an idle instance also sidesteps the batcher's lost wake-up, docs/BENCHMARKS.md "Serving"), and
# dynamic batching off (--max-batch 1)
CONFIGS: dict[str, dict[str, Any]] = {"dynamic": {}, "dynamic-2x1": {"instances": 2, "threads": 1}, "off": {"max_batch": 1}}
DYNAMIC = ("dynamic", "dynamic-2x1")


def _load(url: str, concurrency: int, total: int, rows: dict[str, Any], start: int) -> tuple[list[float], float]:
    """``total`` one-image requests from ``concurrency`` closed-loop clients: (latencies in s, wall seconds).

    The clients are greenlets over one connection pool (tritonclient's HTTP client is gevent-based):
    Python threads, one client each, fought over the interpreter lock and starved the server's cores.
    """
    import gevent

    latencies: list[float] = []
    failures: list[Exception] = []
    next_index = iter(range(start, start + total))
    with Client(url, concurrency=concurrency) as client:
        client.config  # noqa: B018  fetched before the clock starts

        def worker() -> None:
            for k in next_index:  # greenlets share the iterator: no lock needed within one thread
                t0 = time.perf_counter()
                try:
                    client.sample({**rows, "index": [k]})
                except Exception as e:  # noqa: BLE001  reported after the run, never silently dropped
                    failures.append(e)
                    return
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} of {total} requests failed at concurrency {concurrency}: {failures[0]}")
    return latencies, wall


def run_serve_bench(bundle: str | Path, steps: int = 20, solver: str = SampleRequest.solver, requests: int = 64, rounds: int = 2,
                    concurrencies: tuple[int, ...] = CONCURRENCIES, threads: int | None = None,
                    progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every concurrency against dynamic batching on and off, and offline sampling at the formed batch sizes.

    ``requests``: per point at least this many, and at least 4 per client.
    """
    import runtime

    sampler = runtime.load(bundle, "cpu", threads=threads)
    base = ServeOptions(provider="cpu", threads=threads, exit_timeout_s=60)
    rows = {"seed": 0, "steps": steps, "solver": solver}
    points: dict[tuple[str, int], dict[str, Any]] = {}
    offline: dict[int, list[float]] = {}
    for r in range(rounds):
        for name, config in CONFIGS.items():
            http, grpc, metrics = free_ports(3)
            options = replace(base, **config, http_port=http, grpc_port=grpc, metrics_port=metrics)
            with TritonServer(bundle, options) as server:
                _load(server.url, 2, 4, rows, start=10**6)  # warm: connections, the first batch shapes
                served = 4
                for c in concurrencies:
                    total = max(requests, 4 * c)
                    progress(f"round {r + 1}/{rounds}: batching {name}, concurrency {c}, {total} requests")
                    before = server.stats(served)
                    latencies, wall = _load(server.url, c, total, rows, start=0)
                    served += total
                    after = server.stats(served)
                    p = points.setdefault((name, c), {"images_per_s": [], "latencies": [], "batches": {}})
                    p["images_per_s"].append(total / wall)
                    p["latencies"] += latencies
                    for b, n in after["batches"].items():
                        if n > before["batches"].get(b, 0):
                            p["batches"][b] = p["batches"].get(b, 0) + n - before["batches"].get(b, 0)
        for b in sorted({_mean_batch(points[(name, c)]["batches"]) for name in DYNAMIC for c in concurrencies}):
            # offline at the batch sizes the servers formed, this round
            progress(f"round {r + 1}/{rounds}: Sampler.sample at batch {b}")
            n = max(requests, 4 * b)
            sampler.sample(b, num_steps=steps, solver=solver, batch_size=b)  # warm this batch shape
            t0 = time.perf_counter()
            sampler.sample(n, num_steps=steps, solver=solver, batch_size=b)
            offline.setdefault(b, []).append(n / (time.perf_counter() - t0))
    rows_out = []
    for (name, c), p in points.items():
        lat = np.array(p["latencies"]) * 1000
        b = _mean_batch(p["batches"])
        rows_out.append({
            "batching": name, "concurrency": c, "images_per_s": statistics.median(p["images_per_s"]),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "batches": dict(sorted(p["batches"].items())), "mean_batch": b,
            "offline_images_per_s": statistics.median(offline[b]) if name in DYNAMIC else None})
    return {"bundle": str(bundle), "steps": steps, "solver": solver, "rounds": rounds, "requests": requests,
            "threads": threads, "shape": list(sampler.shape), "points": rows_out}


def _mean_batch(batches: dict[int, int]) -> int:
    """The mean size of the batches Triton executed (executions weighted by size: images per execution), rounded."""
    executions = sum(batches.values())
    return max(1, round(sum(b * n for b, n in batches.items()) / executions)) if executions else 1


def serve_ratios(res: dict[str, Any], at: int = 16) -> list[tuple[str, float]]:
    """(what, ratio) at concurrency ``at``, per dynamic configuration: what the serving targets are stated in.

    Measured and printed here; the targets and their verdicts live in docs/BENCHMARKS.md, not in the product.
    """
    by = {(p["batching"], p["concurrency"]): p for p in res["points"]}
    out = []
    for name in DYNAMIC:
        if (name, at) not in by or ("off", at) not in by:
            continue
        d, off = by[(name, at)], by[("off", at)]
        out += [(f"{name}: served / offline at batch {d['mean_batch']}, concurrency {at}",
                 d["images_per_s"] / d["offline_images_per_s"]),
                (f"{name}: batching / off, concurrency {at}", d["images_per_s"] / off["images_per_s"]),
                (f"{name}: p99 / p50, concurrency {at}", d["p99_ms"] / d["p50_ms"])]
    return out


def format_serve_bench(res: dict[str, Any]) -> str:
    head = (f"{'batching':<12}{'conc':>5}{'img/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean batch':>11}"
            f"{'offline img/s':>14}  batch sizes formed (size: executions)")
    lines = [f"served {res['bundle']} ({res['solver']}, {res['steps']} steps, {tuple(res['shape'])}), "
             f"{res['rounds']} rounds, one image per request", head]
    for p in sorted(res["points"], key=lambda p: (list(CONFIGS).index(p["batching"]), p["concurrency"])):
        off = f"{p['offline_images_per_s']:.1f}" if p["offline_images_per_s"] else "-"
        sizes = ", ".join(f"{b}: {n}" for b, n in p["batches"].items())
        lines.append(f"{p['batching']:<12}{p['concurrency']:>5}{p['images_per_s']:>9.1f}{p['p50_ms']:>9.1f}{p['p95_ms']:>9.1f}"
                     f"{p['p99_ms']:>9.1f}{p['mean_batch']:>11}{off:>14}  {sizes}")
    ratios = serve_ratios(res)
    if ratios:
        lines.append("key ratios (the targets they are judged against are in docs/BENCHMARKS.md):")
        lines += [f"  {what}: {value:.2f}" for what, value in ratios]
    return "\n".join(lines)

"""``diffzoo bench --allocator``: the demo's training in a fresh process against the same training warmed up.

glibc's dynamic mmap threshold makes a fresh process pay page faults for every large activation
until a big free raises it (``zoo/allocator.py``). ``zoo.training.train`` sets the thresholds at start, so
a fresh process should train at warm speed. Measured here, in one run, round-robin, each figure a
separate process: fresh (the default), fresh with the tuning off (``DIFFZOO_MALLOPT=0``), and warm
(one identical training first in the same process, then the measured one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable

__all__ = ["VARIANTS", "run_allocator_bench", "format_allocator_bench"]

def measure_training(cfg_json: str, mode: str) -> dict[str, float]:
    """One variant's training images/s, in this (fresh) process; ``mode="warm"`` trains once before measuring."""
    import tempfile

    from zoo.training.config import TrainConfig
    from zoo.training.train import train

    cfg = TrainConfig(**json.loads(cfg_json))
    with tempfile.TemporaryDirectory() as d:
        if mode == "warm":
            train(cfg, d + "/warm-up", progress=False)
        r = train(cfg, d + "/measured", progress=False)
    return {"images_per_s": r.images_per_second}


def measure_sampler() -> dict[str, float]:
    """The eager sampler (the bench's default model and size): the first call in this process, then the same call warm."""
    import time

    import torch

    import zoo

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    model = zoo.build("residual", hidden=64).eval()
    sched = zoo.linear_schedule(1000)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        zoo.ddim_sample(model, sched, x, num_steps=50)
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "second_s": times[1]}


def _in_fresh_process(args: list[str], env: dict[str, str], what: str) -> dict[str, float]:
    """Run this module's ``measure_*`` in a new interpreter (a fresh allocator) and return its JSON result."""
    out = subprocess.run([sys.executable, "-m", __name__, *args], capture_output=True, text=True, check=False,
                         env={**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(f"the {what} process failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# name -> (extra environment, "fresh" or "warm")
VARIANTS = {
    "fresh": ({}, "fresh"),
    "fresh, tuning off": ({"DIFFZOO_MALLOPT": "0"}, "fresh"),
    "warm": ({}, "warm"),
}


def run_allocator_bench(steps: int = 150, repeats: int = 3, threads: int = 2,
                        progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Training images/s of the demo's model per variant (median of ``repeats`` processes each)."""
    from runtime.apps.commands.demo import DemoConfig
    from zoo.training.config import TrainConfig

    d = DemoConfig()
    cfg = TrainConfig(model=d.model, model_config={"hidden": d.hidden}, data=d.data, size=d.size, steps=steps, batch=d.batch,
                      lr=d.lr, ema_decay=d.ema_decay, schedule=d.schedule, seed=d.seed, checkpoint_every=steps)
    arg = json.dumps(dataclasses.asdict(cfg))
    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(repeats):
        for name, (env, mode) in VARIANTS.items():
            progress(f"repeat {r + 1}/{repeats}: {name}")
            result = _in_fresh_process(["train", arg, mode], {"OMP_NUM_THREADS": str(threads), **env}, f"{name!r} training")
            runs[name].append(result["images_per_s"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    sampler: dict[str, list[dict[str, float]]] = {"tuned": [], "tuning off": []}
    for r in range(repeats):
        for name, env in (("tuned", {}), ("tuning off", {"DIFFZOO_MALLOPT": "0"})):
            progress(f"repeat {r + 1}/{repeats}: eager sampler, {name}")
            sampler[name].append(_in_fresh_process(["sampler"], {"OMP_NUM_THREADS": str(threads), **env}, "eager sampler"))
    return {"config": dataclasses.asdict(cfg), "threads": threads, "repeats": repeats, "images_per_s": runs, "median": med,
            "fresh_vs_warm": med["fresh"] / med["warm"], "untuned_vs_warm": med["fresh, tuning off"] / med["warm"],
            "eager_sampler": sampler}


def format_allocator_bench(res: dict[str, Any]) -> str:
    c = res["config"]
    lines = [f"training images/s: {c['model']} {c['model_config']}, {c['data']} {c['size']}x{c['size']}, batch {c['batch']}, "
             f"{c['steps']} steps, {res['threads']} threads; each figure a separate process, {res['repeats']} round-robin repeats",
             f"{'variant':<20}{'median':>9}   runs"]
    for name, runs in res["images_per_s"].items():
        lines.append(f"{name:<20}{res['median'][name]:>9.1f}   " + ", ".join(f"{v:.1f}" for v in runs))
    lines.append(f"fresh process vs warm: {res['fresh_vs_warm']:.1%} (tuning off: {res['untuned_vs_warm']:.1%})")
    lines += ["", "eager ddim_sample, residual hidden=64, 32x32, batch 16, 50 steps: seconds of the first call in a fresh "
              "process / of the same call again (warm), per process"]
    for name, rows in res["eager_sampler"].items():
        first = statistics.median(r["first_s"] for r in rows)
        second = statistics.median(r["second_s"] for r in rows)
        lines.append(f"{name:<12} first {first:.2f} s, warm {second:.2f} s: first/warm {first / second:.2f} "
                     "(runs: " + ", ".join(f"{r['first_s']:.2f}/{r['second_s']:.2f}" for r in rows) + ")")
    return "\n".join(lines)


if __name__ == "__main__":  # a fresh process of run_allocator_bench: `python -m runtime.apps.bench.allocator train CFG MODE`
    what = sys.argv[1]
    print(json.dumps(measure_training(sys.argv[2], sys.argv[3]) if what == "train" else measure_sampler()))

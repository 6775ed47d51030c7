"""``diffzoo bench``: every backend side by side; ``--quality`` time to quality; ``--allocator`` the allocator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.apps.commands.common import positive_int, say, write_json


def register(sub) -> None:
    from runtime.apps.bench.speed import BenchConfig
    from zoo.solvers import SOLVERS

    d = BenchConfig()  # every default once: the options show BenchConfig's

    p = sub.add_parser("bench", help="benchmark every backend side by side (eager, compile, TorchScript, onnxruntime modes)")
    p.add_argument("--model", default=d.model, help=f"registry name of the random-init model (default {d.model})")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help=f"hidden channels of that model (default {d.hidden})")
    p.add_argument("--size", type=positive_int, default=None, help=f"image size (default {d.size}, or the checkpoint's)")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"images per run (default {d.batch})")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"solver steps per run (default {d.steps})")
    p.add_argument("--threads", type=positive_int, default=d.threads,
                   help=f"threads for torch and onnxruntime alike (default {d.threads})")
    p.add_argument("--repeats", type=positive_int, default=d.repeats,
                   help=f"timed runs per backend after one warm-up (default {d.repeats})")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset (default: all that can run here; eager-bf16 only where the CPU has bf16)")
    p.add_argument("--checkpoint", default=None,
                   help="bench a trained model (weights .safetensors or a training run directory) instead of a random "
                        "init of --model/--hidden: its reduced-precision drift is then meaningful")
    p.add_argument("--solver", choices=SOLVERS, default=d.solver, help=f"the solver every backend runs (default {d.solver})")
    p.add_argument("--sweep", action="store_true", help="also sweep batch, steps, size and hidden (slow)")
    p.add_argument("--quality", action="store_true",
                   help="time to quality instead: FD against steps per solver and spacing, then each backend's seconds "
                        "to the quality DDIM reaches at 50 steps (needs --checkpoint of a trained run)")
    p.add_argument("--allocator", action="store_true",
                   help="training images/s of the demo's model: fresh process vs warmed up vs allocator tuning off")
    p.add_argument("--serve", action="store_true",
                   help="serving under load instead: `diffzoo serve` on loopback at concurrency 1/4/16/64, dynamic batching "
                        "on and off, against Sampler.sample at the batch it formed (--checkpoint: a bundle or run; else the "
                        "random init of --model/--hidden/--size; --steps, --solver, --repeats rounds, --requests)")
    p.add_argument("--diffusers", default=None, metavar="DIR",
                   help="the peer benchmark instead: a diffusers UNet2DModel folder (or 'ddpm-cifar10': that architecture, "
                        "random init) sampled by diffusers' own DDIM / DPM-Solver++ loops, torch.compile of them, and "
                        "diffzoo's loop, fused and step modes; with export time, bundle size, session creation and peak "
                        "memory (--batches, --repeats, --threads; DDIM 50 and DPM-Solver++ 20 steps)")
    p.add_argument("--batches", default="1,16", help="with --diffusers: comma-separated batch sizes (default 1,16)")
    p.add_argument("--requests", type=positive_int, default=64,
                   help="with --serve: requests per point, at least 4 per client (default 64)")
    p.add_argument("--data", default=None, help="with --quality: data spec to measure against (default: the run's)")
    p.add_argument("--samples", type=positive_int, default=360, help="with --quality: samples per figure (default 360)")
    p.add_argument("--guidance", type=float, default=d.guidance,
                   help=f"a class-conditional model: every backend samples every class in turn at this w (default {d.guidance:g}); "
                        "the plain bench adds the same network without classes (-unguided backends): the guided cost")
    p.add_argument("--classes", type=positive_int, default=None,
                   help="the random-init model class-conditional with this many classes (unet; a --checkpoint knows its own)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zoo.conditioning import check_guidance

    if sum((args.quality, args.allocator, args.serve, args.diffusers is not None)) > 1:
        raise ValueError("--quality, --allocator, --serve and --diffusers are separate benchmarks: choose one")
    if args.classes and args.checkpoint:
        raise ValueError("--classes makes the random init class-conditional; a --checkpoint knows its own classes")
    check_guidance(args.guidance, 1, True)
    if args.json and not Path(args.json).absolute().parent.is_dir():
        raise FileNotFoundError(f"the directory of {args.json!r} does not exist")
    run_one = (_quality if args.quality else _allocator if args.allocator else _serve if args.serve
               else _peer if args.diffusers is not None else _backends)
    res = run_one(args)
    if args.json:
        write_json(args.json, res)
    return 0


def _command_line() -> None:
    print("command: diffzoo " + " ".join(sys.argv[1:]))


def _allocator(args: argparse.Namespace) -> dict:
    import torch  # noqa: F401  the measured processes train: without the torch extra, one line here (cli), not in them

    from runtime.apps.bench.allocator import format_allocator_bench, run_allocator_bench

    _command_line()
    res = run_allocator_bench(repeats=args.repeats, threads=args.threads, progress=say)
    print(format_allocator_bench(res))
    return res


def _peer(args: argparse.Namespace) -> dict:
    """diffusers' own sampling loops against the bundle of the same folder (runtime.apps.bench.peer)."""
    from runtime.apps.bench.peer import DDPM_CIFAR10_SOURCE, PeerConfig, format_peer_bench, run_peer_bench

    batches = []
    for item in filter(None, (b.strip() for b in args.batches.split(","))):
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--batches {args.batches!r} is invalid: expected comma-separated integers >= 1 (e.g. 1,16)")
        batches.append(int(item))
    if args.diffusers != DDPM_CIFAR10_SOURCE:
        from zoo.diffusers_unet import load_pretrained

        load_pretrained(args.diffusers)  # a refused folder is one line before any work
    _command_line()
    res = run_peer_bench(PeerConfig(source=args.diffusers, batches=tuple(batches or (1,)), threads=args.threads,
                                    repeats=args.repeats), progress=say)
    print(format_peer_bench(res))
    return res


def _serve(args: argparse.Namespace) -> dict:
    """The served bundle under load (runtime.apps.bench.serving)."""
    import tempfile

    from runtime.apps.bench.serving import format_serve_bench, run_serve_bench
    from runtime.apps.bench.speed import BenchConfig
    from runtime.apps.serve.server import triton_unavailable_reason

    if reason := triton_unavailable_reason():
        raise ValueError(f"--serve cannot run here: {reason}")
    with tempfile.TemporaryDirectory(prefix="diffzoo-bench-") as tmp:
        if args.checkpoint:
            from runtime.apps.evaluate import bundle_for

            bundle = bundle_for(Path(args.checkpoint), Path(tmp), progress=True)
        else:
            import torch

            import export
            import zoo

            torch.manual_seed(0)
            model = zoo.build(args.model, hidden=args.hidden)
            size = args.size or BenchConfig.size
            say(f"exporting a random-init {args.model} (hidden {args.hidden}, {size} px)")
            bundle = export.export_bundle(model, Path(tmp) / "bundle", example_shape=(model.config.channels, size, size),
                                          formats=("onnx",), solvers=(args.solver,)).path
        _command_line()
        res = run_serve_bench(bundle, steps=args.steps, solver=args.solver, requests=args.requests, rounds=args.repeats,
                              threads=args.threads, progress=say)
    print(format_serve_bench(res))
    return res


def _quality(args: argparse.Namespace) -> dict:
    """Quality against steps per solver, and each backend's seconds to a stated quality."""
    import tempfile

    from export.format.manifest import load_manifest
    from runtime.apps.bench.time_to_quality import (
        format_time_to_quality,
        run_time_to_quality,
    )
    from runtime.apps.evaluate import bundle_for, data_source_of

    if not args.checkpoint:
        raise ValueError("--quality needs a trained model: --checkpoint RUN_DIR (or a bundle directory)")
    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else (
        "eager", "ort-step", "ort-fused", "ort-loop", "openvino-fused", "openvino-loop")
    with tempfile.TemporaryDirectory(prefix="diffzoo-bench-") as tmp:
        bundle = bundle_for(Path(args.checkpoint), Path(tmp), progress=True)
        data = args.data or data_source_of(load_manifest(bundle))
        if data is None:
            raise ValueError(f"{args.checkpoint!r} does not record its training data: pass --data (e.g. digits)")
        _command_line()
        res = run_time_to_quality(bundle, data, n=args.samples, batch=args.batch, threads=args.threads,
                                  repeats=args.repeats, backends=backends, progress=say, guidance=args.guidance)
    print(format_time_to_quality(res))
    return res


def _choose_backends(args: argparse.Namespace) -> tuple[tuple[str, ...], dict[str, str]]:
    """The backends to run and those skipped here, with the reason (explicitly named ones are never skipped)."""
    from export.format.artifacts import artifact_specs
    from runtime.apps.bench.openvino import openvino_unavailable_reason
    from runtime.apps.bench.backends import BACKENDS, TABLE
    from runtime.apps.bench.harness import has_bf16

    known = tuple(TABLE)
    named = tuple(b.strip() for b in args.backends.split(",") if b.strip()) if args.backends else None
    bad = [b for b in named or () if b not in known]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}: expected a subset of {list(known)}")
    int8_solvers = sorted({s.solver for s in artifact_specs(1, int8=True).values() if s.precision == "int8" and s.solver})
    missing = {"openvino": openvino_unavailable_reason(),  # what each backend's row needs (backends.Backend.needs)
               "int8": None if args.solver in int8_solvers else (f"no int8 graphs of {args.solver} (int8 variants exist "
                                                                 f"for {', '.join(int8_solvers)} only)")}
    unavailable = {b.name: missing[b.needs] for b in BACKENDS if missing.get(b.needs)}
    if named:
        if clash := [b for b in named if b in unavailable]:
            raise ValueError(f"backend {clash[0]!r} cannot run here: {unavailable[clash[0]]}")
        backends = named
    else:
        # bf16 without the arithmetic is emulated by autocast: run only when named
        backends = tuple(b for b in known if b not in unavailable and (TABLE[b].needs != "bf16" or has_bf16()))
    if "eager" not in backends:
        backends = ("eager",) + backends  # every ratio is to eager torch
    return backends, {b: r for b, r in unavailable.items() if named is None}


def _backends(args: argparse.Namespace) -> dict:
    from runtime.apps.bench.report import format_results, format_sweeps, key_ratios
    from runtime.apps.bench.speed import BenchConfig, run_bench, run_sweeps

    backends, skipped = _choose_backends(args)
    size, checkpoint = args.size, None
    if args.checkpoint:
        if args.sweep:
            raise ValueError("--sweep varies the model's width, which a --checkpoint fixes: run the sweep without --checkpoint")
        from zoo.training.runs import run_weights
        from zoo.weights import read_weights_metadata

        checkpoint = str(run_weights(args.checkpoint))
        size = size or (read_weights_metadata(checkpoint).get("data", {}).get("shape") or [0, BenchConfig.size])[-1]
    cfg = BenchConfig(model=args.model, hidden=args.hidden, size=size or BenchConfig.size, batch=args.batch, steps=args.steps,
                      threads=args.threads, repeats=args.repeats, backends=backends, checkpoint=checkpoint, solver=args.solver,
                      classes=args.classes or 0, guidance=args.guidance)
    _command_line()
    for b, reason in skipped.items():
        print(f"skipped {b}: {reason}")
    res = run_bench(cfg, progress=say)
    print(format_results(res))
    if args.sweep:
        res["sweeps"] = run_sweeps(cfg, progress=say)
        print(f"\n{format_sweeps(res['sweeps'])}")
    res["ratios"] = [{"ratio": what, "figures": f} for what, f in key_ratios(res, res.get("sweeps"))]
    print("\nkey ratios (the targets they are judged against are in docs/BENCHMARKS.md):")
    for r in res["ratios"]:
        print(f"  {r['ratio']}: {r['figures']}")
    return res

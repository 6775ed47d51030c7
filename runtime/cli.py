"""The ``diffzoo`` command line: one subcommand per job, each importing only what it needs.

The only place in diffzoo that prints. User errors (ValueError, TypeError, OSError raised for bad
input, and a provider that cannot run here) become one line on stderr and exit status 2; a sampler
that diverged (NonFiniteSampleError) is one line and exit 1; DIFFZOO_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

EXIT_USER_ERROR = 2


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} is invalid: expected an integer >= 1")
    return v


def _eta(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{s!r} is invalid: expected 0 <= eta <= 1 (0 = DDIM, 1 = DDPM-like)")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _model_args(p: argparse.ArgumentParser, channels_from_data: bool = False) -> None:
    p.add_argument("--model", default="residual", help="registry name (see `zoo.available()`); default: residual")
    p.add_argument("--hidden", type=_positive_int, default=64, help="hidden channels (default 64)")
    if channels_from_data:
        p.add_argument("--channels", type=_positive_int, default=None, help="data channels (default: the data's; must match it)")
    else:
        p.add_argument("--channels", type=_positive_int, default=3, help="data channels (default 3)")
    p.add_argument("--size", type=_positive_int, default=32, help="image height and width in pixels (default 32)")
    p.add_argument("--schedule", default="linear", help="noise schedule: linear or cosine (default linear)")


def _write_images(path: Path, x) -> None:
    """Write a batch by suffix: .ppm/.pgm the first image, .npy the raw array, else a PNG-style grid.

    Grids of images under 64 px are enlarged (nearest neighbour) so that a person can see them.
    """
    import numpy as np

    from zoo.files import atomic_write
    from zoo.images import save_grid, write_ppm

    suffix = path.suffix.lower()
    if suffix in (".ppm", ".pgm"):
        write_ppm(path, x)
    elif suffix == ".npy":
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(x, dtype=np.float32))
        atomic_write(path, buf.getvalue())
    else:
        save_grid(path, x, scale=_grid_scale(x), pad_value=96)


def _grid_scale(x) -> int:
    return max(1, 64 // x.shape[-1])


def cmd_eager_sample(args: argparse.Namespace) -> int:
    import torch

    import zoo

    model = zoo.build(args.model or "residual", hidden=args.hidden, channels=args.channels).eval()
    schedule = zoo.make_schedule(args.schedule, num_train_timesteps=model.config.num_train_timesteps)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # random init, reproducible by seed
    x_T = torch.randn((args.n, args.channels, args.size, args.size), generator=g)
    t0 = time.perf_counter()
    x0 = zoo.sample(model, schedule, x_T, num_steps=args.steps, solver=args.solver, eta=args.eta, noise=g, progress=True)
    dt = time.perf_counter() - t0
    out = Path(args.out)
    _write_images(out, x0)
    print(f"{args.n} images from an untrained {args.model} (hidden={args.hidden}) in {dt:.2f} s -> {out}")
    return 0


def _load_or_build(args: argparse.Namespace):
    """(model, schedule, example_shape, data source) from --checkpoint, or a seeded random init from --model."""
    import torch

    import zoo

    if args.checkpoint:
        from zoo.checkpoint import load_weights
        from zoo.train import run_weights

        if args.model is not None:
            raise ValueError(f"--checkpoint {args.checkpoint} already names its model: drop --model {args.model}")
        model, schedule, meta = load_weights(run_weights(args.checkpoint))
        shape = tuple(meta.get("data", {}).get("shape") or (model.config.channels, args.size, args.size))
        return model, schedule, shape, meta.get("data", {}).get("source")
    torch.manual_seed(args.seed)
    model = zoo.build(args.model or "residual", hidden=args.hidden, channels=args.channels, kernel_size=args.kernel_size)
    schedule = zoo.make_schedule(args.schedule, num_train_timesteps=model.config.num_train_timesteps)
    return model, schedule, (args.channels, args.size, args.size), None


def cmd_export(args: argparse.Namespace) -> int:
    import export

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    model, schedule, shape, source = _load_or_build(args)
    t0 = time.perf_counter()
    try:
        bundle = export.export_bundle(
            model, args.out, schedule=schedule, example_shape=shape, opset=args.opset, formats=formats,
            force=args.force, seed=args.seed, progress=True, int8=args.int8, atol=args.atol, data_source=source,
        )
    except export.ExportVerificationError as e:
        print(f"diffzoo export: error: {e} (nothing was written)", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    m = bundle.manifest
    print(f"exported {m['model']['name']} {m['model']['config']} ({m['schedule']['name']} schedule, data {shape})")
    print(f"{'artifact':<20}{'format':<13}{'seconds':>8}  {'max |diff|':>11}  {'bound':>22}  {'fp32 ref err':>12}  verified at")
    for c in bundle.checks:
        sizes = "x".join(str(c["shape"][k]) for k in ("batch", "height", "width"))
        steps = f", {c['shape']['steps']} steps" if "steps" in c["shape"] else ""
        if c["rtol"] is None:
            bound = f"atol {c['atol']:.1e} ({c['atol_source']})"
        else:
            bound = f"rel {c['rel_rms_diff']:.1%} <= {c['rtol']:.0%}"
        ref = f"{c['reference_error']:.1e}" if c.get("reference_error") is not None else "-"
        print(f"{c['artifact']:<20}{c['format']:<13}{bundle.seconds[c['artifact']]:>8.2f}  "
              f"{c['max_abs_diff']:>11.2e}  {bound:>22}  {ref:>12}  B x H x W = {sizes}{steps}")
    print(f"bundle written to {bundle.path} in {total:.1f} s")
    return 0


def _shard(s: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a shard spec: expected i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"{s!r} is invalid: expected i/N with N >= 1 and 0 <= i < N")
    return i, n


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".npy")


def _check_out(path: Path, channels: int | None = None) -> None:
    """Refuse a bad output path before any work is done (``channels``: of the images that will be written)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot write {str(path)!r}: the suffix must be one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory of {str(path)!r} does not exist")
    if channels is not None and channels not in (1, 3) and path.suffix.lower() != ".npy":
        raise ValueError(f"cannot write {channels}-channel images to {str(path)!r}: image files hold 1 or 3 channels; "
                         "use a .npy output")


def cmd_sample(args: argparse.Namespace) -> int:
    import runtime

    out = Path(args.out)
    _check_out(out)
    i, n_shards = args.shard
    start, stop = i * args.n // n_shards, (i + 1) * args.n // n_shards
    if stop == start:
        raise ValueError(f"shard {i}/{n_shards} of --n {args.n} images is empty: use fewer shards than images")
    sampler = runtime.load(args.bundle, provider=args.provider, strict=args.provider == "cuda", threads=args.threads,
                           cuda=runtime.CudaOptions(cuda_graph=args.cuda_graph), precision=args.precision)
    _check_out(out, channels=sampler.shape[0])
    if args.cuda_graph and (args.mode != "fused" or sampler.device != "cuda"):
        raise ValueError(f"--cuda-graph replays the fused step on CUDA: it needs --mode fused and the CUDA provider "
                         f"(here: --mode {args.mode}, {sampler.providers[0]})")
    sampler.check(args.steps, args.eta, args.spacing, args.mode, args.solver)
    t0 = time.perf_counter()
    x = sampler.sample(stop - start, num_steps=args.steps, seed=args.seed, eta=args.eta, spacing=args.spacing,
                       mode=args.mode, batch_size=args.batch_size, start=start, progress=True, solver=args.solver)
    dt = time.perf_counter() - t0
    _write_images(out, x)
    shard = f" (shard {i}/{n_shards}: images {start}..{stop - 1})" if n_shards > 1 else ""
    print(f"{len(x)} images{shard}, {args.solver} {args.steps} steps, mode {args.mode}, {args.precision}, {sampler.providers[0]}: "
          f"{dt:.2f} s ({len(x) / dt:.1f} img/s) -> {out}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    import json

    import runtime

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    report = runtime.parity(args.bundle, provider=args.provider, num_steps=args.steps, batch=args.batch, seed=args.seed,
                            modes=modes, eta=args.eta, strict=args.provider == "cuda", solver=args.solver,
                            spacing=args.spacing)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0 if report.passed else 1


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from runtime.evaluate import evaluate
    from zoo.files import atomic_write

    for path in (args.json, args.grid):
        if path and not Path(path).absolute().parent.is_dir():
            raise FileNotFoundError(f"the directory of {path!r} does not exist")
    if args.grid:
        _check_out(Path(args.grid))
    res, x = evaluate(args.target, data=args.data, n=args.samples, num_steps=args.steps, spacing=args.spacing, eta=args.eta,
                      seed=args.seed, mode=args.mode, provider=args.provider, progress=True, solver=args.solver)
    if res is None:  # not rank 0 under torchrun
        return 0
    print(f"quality of {res['target']}: {res['samples']} samples, {res['solver']} {res['steps']} steps ({res['spacing']}), eta {res['eta']}, "
          f"{res['mode']} mode on {res['provider']}, {res['processes']} process(es); against {res['data']}")
    print(res.pop("text"))
    print("targets met" if res["quality"]["met"] else "targets NOT met")
    if args.json:
        atomic_write(args.json, (json.dumps(res, indent=2) + "\n").encode())
        print(f"report written to {args.json}")
    if args.grid:
        from zoo.images import save_grid

        save_grid(args.grid, x[:64], scale=_grid_scale(x), pad_value=96)
        print(f"samples written to {args.grid}")
    return 0


def _model_config(s: str) -> dict:
    """``levels=2,blocks=1`` -> {"levels": 2, "blocks": 1} (integer config fields)."""
    out = {}
    for item in filter(None, (i.strip() for i in s.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE (e.g. levels=2,blocks=1)")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not an integer") from None
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    from runtime.doctor import diagnose

    rows = diagnose()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from zoo.train import TrainConfig, train

    channels = {} if args.channels is None else {"channels": args.channels}  # the data decides; a mismatch is refused
    cfg = TrainConfig(
        model=args.model, model_config={"hidden": args.hidden, "kernel_size": args.kernel_size, **channels, **args.model_config},
        data=args.data,
        size=args.size, steps=args.steps, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, schedule=args.schedule, seed=args.seed,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, device=args.device,
    )
    r = train(cfg, args.out, resume=args.resume, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:
        loss = f"{r.losses[-1][1]:.4f}" if r.losses else "-"
        print(f"trained {cfg.model} to step {r.step} on {cfg.data} ({r.world_size} process(es)): final loss {loss}, "
              f"{r.images_per_second:.0f} img/s, {r.seconds:.1f} s")
        print(f"checkpoint: {r.checkpoint}")
        print(f"export it:  diffzoo export --checkpoint {args.out} --out bundles/{Path(args.out).name}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from runtime.demo import FAST, DemoConfig, format_summary, run_demo

    cfg = FAST if args.fast else DemoConfig()
    summary = run_demo(args.out, cfg, provider=args.provider, progress=True, say=print)
    print()
    print(format_summary(summary))
    return 0 if summary["parity_passed"] else 1


def _bench_backends(args: argparse.Namespace) -> tuple[tuple[str, ...], dict[str, str]]:
    """The backends to run and those skipped here, with the reason (explicitly named ones are never skipped)."""
    from runtime.bench import CPU_BACKENDS, CUDA_BACKENDS, INT8_BACKENDS, OPENVINO_BACKENDS, _has_bf16
    from runtime.openvino_backend import openvino_unavailable_reason

    known = CPU_BACKENDS + CUDA_BACKENDS
    named = tuple(b.strip() for b in args.backends.split(",") if b.strip()) if args.backends else None
    bad = [b for b in named or () if b not in known]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}: expected a subset of {list(known)}")
    unavailable: dict[str, str] = {}
    if (reason := openvino_unavailable_reason()) is not None:
        unavailable.update({b: reason for b in OPENVINO_BACKENDS})
    if args.solver != "ddim":
        unavailable.update({b: f"no int8 graphs of {args.solver} (int8 variants exist for DDIM only)" for b in INT8_BACKENDS})
    if named:
        if clash := [b for b in named if b in unavailable]:
            raise ValueError(f"backend {clash[0]!r} cannot run here: {unavailable[clash[0]]}")
        backends = named
    else:
        backends = tuple(b for b in known if b not in unavailable and (b != "eager-bf16" or _has_bf16()))
    if "eager" not in backends:
        backends = ("eager",) + backends  # every ratio is to eager torch
    return backends, {b: r for b, r in unavailable.items() if named is None}


def _bench_quality(args: argparse.Namespace) -> int:
    """``bench --quality``: quality against steps per solver, and each backend's seconds to a stated quality."""
    import json
    import tempfile

    from export.manifest import load_manifest
    from runtime.evaluate import bundle_for, data_source_of
    from runtime.time_to_quality import format_time_to_quality, run_time_to_quality

    if not args.checkpoint:
        raise ValueError("--quality needs a trained model: --checkpoint RUN_DIR (or a bundle directory)")
    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else (
        "eager", "ort-step", "ort-fused", "ort-loop", "openvino-fused", "openvino-loop")
    say = lambda s: print(f"  .. {s}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="diffzoo-bench-") as tmp:
        bundle = bundle_for(Path(args.checkpoint), Path(tmp), progress=True)
        data = args.data or data_source_of(load_manifest(bundle))
        if data is None:
            raise ValueError(f"{args.checkpoint!r} does not record its training data: pass --data (e.g. digits)")
        print("command: diffzoo " + " ".join(sys.argv[1:]))
        res = run_time_to_quality(bundle, data, n=args.samples, batch=args.batch, threads=args.threads,
                                  repeats=args.repeats, backends=backends, progress=say)
    print(format_time_to_quality(res))
    if args.json:
        from zoo.files import atomic_write

        atomic_write(args.json, (json.dumps(res, indent=2) + "\n").encode())
        print(f"results written to {args.json}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from runtime.bench import BenchConfig, check_targets, format_results, format_sweeps, run_bench, run_sweeps

    if args.quality and args.allocator:
        raise ValueError("--quality and --allocator are separate benchmarks: choose one")
    if args.quality:
        return _bench_quality(args)
    if args.allocator:
        from runtime.allocator_bench import format_allocator_bench, run_allocator_bench

        print("command: diffzoo " + " ".join(sys.argv[1:]))
        res = run_allocator_bench(repeats=args.repeats, threads=args.threads,
                                  progress=lambda s: print(f"  .. {s}", file=sys.stderr, flush=True))
        print(format_allocator_bench(res))
        return 0
    backends, skipped = _bench_backends(args)
    size, checkpoint = args.size, None
    if args.checkpoint:
        if args.sweep:
            raise ValueError("--sweep varies the model's width, which a --checkpoint fixes: run the sweep without --checkpoint")
        from zoo.checkpoint import read_weights_metadata
        from zoo.train import run_weights

        checkpoint = str(run_weights(args.checkpoint))
        size = size or (read_weights_metadata(checkpoint).get("data", {}).get("shape") or [0, 32])[-1]
    cfg = BenchConfig(model=args.model, hidden=args.hidden, size=size or 32, batch=args.batch, steps=args.steps,
                      threads=args.threads, repeats=args.repeats, backends=backends, checkpoint=checkpoint, solver=args.solver)
    say = lambda s: print(f"  .. {s}", file=sys.stderr, flush=True)  # noqa: E731
    print("command: diffzoo " + " ".join(sys.argv[1:]))
    for b, reason in skipped.items():
        print(f"skipped {b}: {reason}")
    res = run_bench(cfg, progress=say)
    print(format_results(res))
    if args.sweep:
        res["sweeps"] = run_sweeps(cfg, progress=say)
        print()
        print(format_sweeps(res["sweeps"]))
    res["targets"] = [{"target": t, "met": ok, "figures": f} for t, ok, f in check_targets(res, res.get("sweeps"))]
    print()
    for t in res["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measurable here"}[t["met"]]
        print(f"[{verdict}] {t['target']}: {t['figures']}")
    if args.json:
        from zoo.files import atomic_write

        atomic_write(args.json, (json.dumps(res, indent=2) + "\n").encode())
        print(f"results written to {args.json}")
    return 0


def _solver_arg(p: argparse.ArgumentParser) -> None:
    from zoo.diffusion import SOLVERS

    p.add_argument("--solver", choices=SOLVERS, default="ddim",
                   help="ddim (default, any eta) or dpmpp_2m (DPM-Solver++(2M): ~3x fewer steps, eta 0)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffzoo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from zoo.diffusion import SOLVERS, SPACINGS

    parser = _Parser(prog="diffzoo", description="Build, train, export and deploy small diffusion denoisers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"diffzoo {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("eager-sample", help="build a model and sample a few images with the eager torch sampler")
    _model_args(p)
    p.add_argument("--n", type=_positive_int, default=8, help="number of images (default 8)")
    p.add_argument("--steps", type=_positive_int, default=20, help="solver steps (default 20)")
    _solver_arg(p)
    p.add_argument("--eta", type=_eta, default=0.0, help="0 = deterministic DDIM (default), 1 = DDPM-like")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="output: .png grid, .ppm first image, .npy array")
    p.set_defaults(func=cmd_eager_sample)

    from export.manifest import FORMATS

    p = sub.add_parser("export", help="export a model to a verified TorchScript/ONNX bundle")
    _model_args(p)
    p.add_argument("--kernel-size", type=_positive_int, default=3, help="odd conv kernel size (default 3)")
    p.add_argument("--checkpoint", default=None, help="a weights .safetensors from `diffzoo train` (instead of --model)")
    p.add_argument("--out", required=True, help="bundle directory (absent or empty, unless --force)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (default 20)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out after the new bundle is verified")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and of the verification inputs")
    p.add_argument("--int8", action="store_true",
                   help="also write int8 variants (inner convolutions quantized, for the CPU provider; see `sample --precision`)")
    p.add_argument("--atol", type=float, default=None,
                   help="override every fp32 artifact's bound on max |diff| (default: derived per artifact from eager "
                        "float32's own error against float64, recorded in the manifest)")
    p.set_defaults(func=cmd_export, model=None)

    from runtime.providers import PROVIDERS
    from runtime.sampler import MODES, PRECISIONS

    p = sub.add_parser("sample", help="sample images from a bundle with onnxruntime (no torch needed)")
    p.add_argument("bundle", help="bundle directory from `diffzoo export`")
    p.add_argument("--n", type=_positive_int, default=16, help="number of images (default 16)")
    p.add_argument("--steps", type=_positive_int, default=50, help="solver steps (default 50)")
    _solver_arg(p)
    p.add_argument("--eta", type=_eta, default=0.0, help="0 = deterministic DDIM (default), 1 = DDPM-like")
    p.add_argument("--seed", type=int, default=0, help="image k depends only on (seed, k)")
    p.add_argument("--mode", choices=MODES, default="loop", help="loop (default): one run per batch; fused; step")
    p.add_argument("--spacing", choices=sorted(SPACINGS), default="leading", help="timestep spacing (default leading)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/N: sample only the i-th of N equal parts of the n images")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per session run (default 16)")
    p.add_argument("--threads", type=_positive_int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--cuda-graph", action="store_true", help="fused mode on CUDA: replay the step as a CUDA graph")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default) or int8: the bundle's int8 variants (export --int8), CPU provider")
    p.add_argument("--out", required=True, help="output file: .png grid, .ppm first image, .npy array")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("parity", help="compare the onnxruntime sampler with eager torch, step by step")
    p.add_argument("bundle")
    p.add_argument("--provider", choices=PROVIDERS, default="auto")
    p.add_argument("--steps", type=_positive_int, default=50, help="solver steps (default 50)")
    _solver_arg(p)
    p.add_argument("--spacing", choices=sorted(SPACINGS), default="leading", help="timestep spacing (default leading)")
    p.add_argument("--batch", type=_positive_int, default=4, help="images compared (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and the per-step noise")
    p.add_argument("--eta", type=_eta, default=0.0, help="0 = deterministic (default), 1 = DDPM-like (ddim only)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("eval", help="sample a bundle or training run and measure quality against real data")
    p.add_argument("target", help="bundle directory, or training run directory (exported to a temporary bundle first)")
    p.add_argument("--data", default=None, help="data spec to measure against (default: the one the bundle records)")
    # not --n: under torchrun, argparse would take "--n" for an abbreviation of torchrun's own --nnodes
    p.add_argument("--samples", type=_positive_int, default=360, help="number of samples (default 360, the digits' held-out size)")
    p.add_argument("--steps", type=_positive_int, default=50, help="solver steps (default 50)")
    _solver_arg(p)
    p.add_argument("--spacing", choices=sorted(SPACINGS), default="leading", help="timestep spacing (default leading)")
    p.add_argument("--eta", type=_eta, default=0.0, help="0 = deterministic DDIM (default), 1 = DDPM-like")
    p.add_argument("--seed", type=int, default=0, help="image k depends only on (seed, k)")
    p.add_argument("--mode", choices=MODES, default="loop", help="runtime mode (default loop)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--grid", default=None, help="also write up to 64 samples as a PNG grid (scaled up)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train a model (data-parallel under torchrun)")
    _model_args(p, channels_from_data=True)
    p.add_argument("--kernel-size", type=_positive_int, default=3, help="odd conv kernel size (default 3)")
    p.add_argument("--model-config", type=_model_config, default={},
                   help="other integer config fields of the model, e.g. levels=2,blocks=1 for unet")
    p.add_argument("--data", default="synthetic", help="synthetic (default) | digits | idx:PATH | cifar10:PATH | folder:PATH")
    p.add_argument("--steps", type=_positive_int, default=2000, help="total optimizer steps (default 2000)")
    p.add_argument("--batch", type=_positive_int, default=64, help="global batch size (default 64)")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (default 1)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=_positive_int, default=500)
    p.add_argument("--sample-every", type=int, default=0, help="steps between EMA sample grids (0: at the end only)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", required=True, help="run directory (checkpoints, samples, log)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run's last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="train, export, sample, check parity and quality: the whole product in minutes")
    p.add_argument("--out", default="diffzoo-demo", help="output directory (default ./diffzoo-demo; an earlier demo there is replaced)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto")
    p.add_argument("--fast", action="store_true", help="tiny sizes: every stage runs in seconds, nothing is trained to quality")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmark every backend side by side (eager, compile, TorchScript, onnxruntime modes)")
    p.add_argument("--model", default="residual")
    p.add_argument("--hidden", type=_positive_int, default=64)
    p.add_argument("--size", type=_positive_int, default=None, help="image size (default 32, or the checkpoint's)")
    p.add_argument("--batch", type=_positive_int, default=16)
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--threads", type=_positive_int, default=2, help="threads for torch and onnxruntime alike (default 2)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed runs per backend after one warm-up")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset (default: all that can run here; eager-bf16 only where the CPU has bf16)")
    p.add_argument("--checkpoint", default=None,
                   help="bench a trained model (weights .safetensors or a training run directory) instead of a random "
                        "init of --model/--hidden: its reduced-precision drift is then meaningful")
    p.add_argument("--solver", choices=SOLVERS, default="ddim", help="the solver every backend runs (default ddim)")
    p.add_argument("--sweep", action="store_true", help="also sweep batch, steps, size and hidden (slow)")
    p.add_argument("--quality", action="store_true",
                   help="time to quality instead: FD against steps per solver and spacing, then each backend's seconds "
                        "to the quality DDIM reaches at 50 steps (needs --checkpoint of a trained run)")
    p.add_argument("--allocator", action="store_true",
                   help="training images/s of the demo's model: fresh process vs warmed up vs allocator tuning off")
    p.add_argument("--data", default=None, help="with --quality: data spec to measure against (default: the run's)")
    p.add_argument("--samples", type=_positive_int, default=360, help="with --quality: samples per figure (default 360)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("doctor", help="versions, execution providers and why CUDA does or does not load")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    from runtime.providers import ProviderUnavailableError
    from zoo.diffusion import NonFiniteLossError, NonFiniteSampleError

    try:
        return func(args)
    except (NonFiniteSampleError, NonFiniteLossError) as e:  # the model diverged: not the user's typing, but one line all the same
        if os.environ.get("DIFFZOO_DEBUG"):
            raise
        print(f"diffzoo {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ProviderUnavailableError) as e:
        if os.environ.get("DIFFZOO_DEBUG"):
            raise
        print(f"diffzoo {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as e:  # a verification failure (export, bench): the report, not a traceback
        from export.verify import ExportVerificationError

        if not isinstance(e, ExportVerificationError) or os.environ.get("DIFFZOO_DEBUG"):
            raise
        print(f"diffzoo {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diffzoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``diffzoo sample``: images from a bundle with onnxruntime (no torch needed)."""

from __future__ import annotations

import argparse
import time

from runtime.apps.commands.common import (
    check_out,
    class_args,
    class_request,
    parse_guidance,
    positive_int,
    read_manifest,
    request_args,
    request_of,
    write_images,
)


def _shard(s: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a shard spec: expected i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"{s!r} is invalid: expected i/N with N >= 1 and 0 <= i < N")
    return i, n


def register(sub) -> None:
    from runtime.providers import PROVIDERS
    from runtime.requests import MODES, PRECISIONS, SampleRequest

    p = sub.add_parser("sample", help="sample images from a bundle with onnxruntime (no torch needed)")
    p.add_argument("bundle", help="bundle directory from `diffzoo export`")
    p.add_argument("--n", type=positive_int, default=SampleRequest.n, help=f"number of images (default {SampleRequest.n})")
    request_args(p)
    p.add_argument("--mode", choices=MODES, default=SampleRequest.mode, help="loop (default): one run per batch; fused; step")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/N: sample only the i-th of N equal parts of the n images")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"images per session run (default {SampleRequest.batch_size})")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads (default: onnxruntime's)")
    p.add_argument("--cuda-graph", action="store_true", help="fused mode on CUDA: replay the step as a CUDA graph")
    p.add_argument("--precision", choices=PRECISIONS, default=SampleRequest.precision,
                   help="fp32 (default) or int8: the bundle's int8 variants (export --int8), CPU provider")
    class_args(p, all_help="--n images of every class: a .png grid, a row per class, named")
    p.add_argument("--out", required=True, help="output file: .png grid, .ppm first image, .npy array")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import runtime
    from runtime.requests import check_cuda_graph

    out = check_out(args.out)
    manifest = read_manifest(args.bundle)
    total, labels = class_request(manifest, args.n, args.classes)  # --class all: n of every class
    plan = request_of(args, n=total, labels=labels, guidance=parse_guidance(args.guidance)).resolve(manifest, args.bundle)
    if args.classes == "all" and (out.suffix.lower() != ".png" or args.shard != (0, 1)):
        raise ValueError("--class all writes one .png grid with a row per class: use a .png --out and no --shard")
    i, n_shards = args.shard
    start, stop = i * total // n_shards, (i + 1) * total // n_shards
    if stop == start:
        raise ValueError(f"shard {i}/{n_shards} of {total} images is empty: use fewer shards than images")
    check_cuda_graph(args.cuda_graph, args.mode)
    sampler = runtime.load(args.bundle, provider=args.provider, strict=args.provider == "cuda", threads=args.threads,
                           cuda=runtime.CudaOptions(cuda_graph=args.cuda_graph), precision=args.precision)
    check_out(out, channels=sampler.shape[0])
    check_cuda_graph(args.cuda_graph, args.mode, sampler.providers[0])
    t0 = time.perf_counter()
    x = sampler.sample(plan.part(start, stop), progress=True)
    dt = time.perf_counter() - t0
    write_images(out, x, sampler.manifest["classes"]["names"] if args.classes == "all" else None)
    shard = f" (shard {i}/{n_shards}: images {start}..{stop - 1})" if n_shards > 1 else ""
    print(f"{len(x)} images{shard}, {args.solver} {args.steps} steps, mode {args.mode}, {args.precision}, {sampler.providers[0]}: "
          f"{dt:.2f} s ({len(x) / dt:.1f} img/s) -> {out}")
    return 0

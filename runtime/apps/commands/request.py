"""``diffzoo request``: images from a served bundle (``diffzoo serve``), written as ``diffzoo sample`` writes them."""

from __future__ import annotations

import argparse
import time

from runtime.apps.commands.common import check_out, class_args, conditioning, positive_int, request_args, write_images


def register(sub) -> None:
    from runtime.apps.serve.server import ServeOptions

    p = sub.add_parser("request", help="request images from a `diffzoo serve` server (KServe v2 over HTTP)")
    p.add_argument("url", help="the server's HTTP endpoint, e.g. http://127.0.0.1:8000")
    p.add_argument("--n", type=positive_int, default=16, help="number of images (default 16)")
    p.add_argument("--start", type=int, default=0, help="index of the first image in the stream --seed (default 0)")
    request_args(p)
    class_args(p, all_help="--n images of every class: a .png grid, a row per class, named")
    p.add_argument("--model-name", default=ServeOptions.model_name, help=f"the served model (default {ServeOptions.model_name})")
    p.add_argument("--timeout", type=positive_int, default=300, help="seconds to wait for the server (default 300)")
    p.add_argument("--out", required=True, help="output file: .png grid, .ppm first image, .npy array")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from runtime.apps.serve.client import Client, server_address
    from runtime.noise import MAX_SEED
    from zoo.validate import check_int

    out = check_out(args.out)
    server_address(args.url)  # a bad URL is named before anything is sent
    check_int("seed", args.seed, 0, MAX_SEED)
    if args.start < 0:
        raise ValueError(f"--start {args.start} is invalid: expected an index >= 0")
    if args.classes == "all" and out.suffix.lower() != ".png":
        raise ValueError("--class all writes one .png grid with a row per class: use a .png --out")
    with Client(args.url, args.model_name, timeout_s=args.timeout) as client:
        names = client.class_names
        labels, guidance = conditioning({"classes": {"count": len(names), "names": names}} if names else {},
                                        args.n, args.classes, args.guidance)
        total = args.n if labels is None else len(labels)
        rows = {"seed": args.seed, "index": np.arange(args.start, args.start + total), "steps": args.steps,
                "solver": args.solver, "eta": args.eta, "spacing": args.spacing, "label": labels, "guidance": guidance}
        t0 = time.perf_counter()
        x = client.sample(rows, output="sample")  # the floats: files byte for byte those of `diffzoo sample`
        dt = time.perf_counter() - t0
    check_out(out, channels=x.shape[1])
    write_images(out, x, names if args.classes == "all" else None)
    print(f"{len(x)} images from {args.url} ({args.solver} {args.steps} steps): {dt:.2f} s ({len(x) / dt:.1f} img/s) -> {out}")
    return 0

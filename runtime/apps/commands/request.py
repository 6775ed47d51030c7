"""``diffzoo request``: images from a served bundle (``diffzoo serve``), written as ``diffzoo sample`` writes them."""

from __future__ import annotations

import argparse
import time

from runtime.apps.commands.common import (
    check_out,
    class_args,
    class_request,
    parse_guidance,
    positive_int,
    request_args,
    request_of,
    write_images,
)


def register(sub) -> None:
    from runtime.apps.serve.server import ServeOptions
    from runtime.requests import SampleRequest

    p = sub.add_parser("request", help="request images from a `diffzoo serve` server (KServe v2 over HTTP)")
    p.add_argument("url", help="the server's HTTP endpoint, e.g. http://127.0.0.1:8000")
    p.add_argument("--n", type=positive_int, default=SampleRequest.n, help=f"number of images (default {SampleRequest.n})")
    p.add_argument("--start", type=int, default=SampleRequest.start, help="index of the first image in the stream --seed (default 0)")
    request_args(p)
    class_args(p, all_help="--n images of every class: a .png grid, a row per class, named")
    p.add_argument("--model-name", default=ServeOptions.model_name, help=f"the served model (default {ServeOptions.model_name})")
    p.add_argument("--timeout", type=positive_int, default=300, help="seconds to wait for the server (default 300)")
    p.add_argument("--out", required=True, help="output file: .png grid, .ppm first image, .npy array")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from runtime.apps.serve.client import Client, server_address
    from runtime.requests import Conditioning

    out = check_out(args.out)
    server_address(args.url)  # a bad URL is named before anything is sent
    r = request_of(args, start=args.start).check()  # the settings any server would refuse, before any is asked
    if args.classes == "all" and out.suffix.lower() != ".png":
        raise ValueError("--class all writes one .png grid with a row per class: use a .png --out")
    with Client(args.url, args.model_name, timeout_s=args.timeout) as client:
        names = client.class_names  # the served bundle's; the client never sends its null class
        manifest = {"conditioning": client.conditioning,  # what Conditioning.of reads of a bundle, as served
                    **({"classes": {"count": len(names), "names": names, "null": len(names)}} if names else {})}
        total, labels = class_request(manifest, args.n, args.classes)
        cond = Conditioning.of(manifest, total, labels, parse_guidance(args.guidance))  # names to indices, checked
        rows = {"seed": r.seed, "index": np.arange(r.start, r.start + total), "steps": r.num_steps, "solver": r.solver,
                "eta": r.eta, "spacing": r.spacing, "label": cond.labels, "guidance": cond.guidance}
        t0 = time.perf_counter()
        x = client.sample(rows, output="sample")  # the floats: files byte for byte those of `diffzoo sample`
        dt = time.perf_counter() - t0
    check_out(out, channels=x.shape[1])
    write_images(out, x, names if args.classes == "all" else None)
    print(f"{len(x)} images from {args.url} ({args.solver} {args.steps} steps): {dt:.2f} s ({len(x) / dt:.1f} img/s) -> {out}")
    return 0

"""``diffzoo parity``: the onnxruntime sampler against eager torch, step by step."""

from __future__ import annotations

import argparse

from runtime.apps.commands.common import (
    class_args,
    parse_classes,
    parse_guidance,
    positive_int,
    read_manifest,
    request_args,
    request_of,
)


def register(sub) -> None:
    from runtime.providers import PROVIDERS
    from runtime.requests import MODES, PARITY_BATCH

    p = sub.add_parser("parity", help="compare the onnxruntime sampler with eager torch, step by step")
    p.add_argument("bundle", help="bundle directory from `diffzoo export`")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    request_args(p)
    p.add_argument("--batch", type=positive_int, default=None,
                   help=f"images compared (default {PARITY_BATCH}; with --class all, one per class)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)} (default all)")
    class_args(p, all_help="every class in turn over the --batch images")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import runtime

    from runtime.apps.evaluate import requested_labels
    from runtime.requests import PARITY_BATCH

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    manifest = read_manifest(args.bundle)
    every = parse_classes(args.classes) == "all" and manifest.get("classes")
    batch = args.batch or (manifest["classes"]["count"] if every else PARITY_BATCH)
    if every and batch < manifest["classes"]["count"]:
        raise ValueError(f"--class all compares every class: --batch {batch} is invalid, expected at least the bundle's "
                         f"{manifest['classes']['count']} classes (or leave --batch out)")
    request = request_of(args, n=batch, labels=requested_labels(manifest, batch, parse_classes(args.classes)),
                         guidance=parse_guidance(args.guidance))
    report = runtime.parity(args.bundle, provider=args.provider, request=request, modes=modes, strict=args.provider == "cuda")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0 if report.passed else 1

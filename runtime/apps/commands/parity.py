"""``diffzoo parity``: the onnxruntime sampler against eager torch, step by step."""

from __future__ import annotations

import argparse

from runtime.apps.commands.common import check_request, class_args, parse_classes, parse_guidance, positive_int, request_args


def register(sub) -> None:
    from runtime.providers import PROVIDERS
    from runtime.requests import MODES

    p = sub.add_parser("parity", help="compare the onnxruntime sampler with eager torch, step by step")
    p.add_argument("bundle", help="bundle directory from `diffzoo export`")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    request_args(p)
    p.add_argument("--batch", type=positive_int, default=None,
                   help="images compared (default 4; with --class all, one per class)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)} (default all)")
    class_args(p, all_help="every class in turn over the --batch images")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import runtime

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    from runtime.apps.evaluate import requested_labels
    from runtime.requests import check_classes

    manifest = check_request(args.bundle, args.steps, modes, args.eta, args.spacing, args.solver)
    classes = parse_classes(args.classes)
    every = classes == "all" and manifest.get("classes")
    batch = args.batch or (manifest["classes"]["count"] if every else 4)
    if every and batch < manifest["classes"]["count"]:
        raise ValueError(f"--class all compares every class: --batch {batch} is invalid, expected at least the bundle's "
                         f"{manifest['classes']['count']} classes (or leave --batch out)")
    labels, guidance = requested_labels(manifest, batch, classes), parse_guidance(args.guidance)
    check_classes(manifest, batch, labels, guidance)  # before any session is made
    report = runtime.parity(args.bundle, provider=args.provider, num_steps=args.steps, batch=batch, seed=args.seed,
                            modes=modes, eta=args.eta, strict=args.provider == "cuda", solver=args.solver,
                            spacing=args.spacing, labels=labels, guidance=guidance)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0 if report.passed else 1

"""``diffzoo parity``: the onnxruntime sampler against eager torch, step by step."""

from __future__ import annotations

import argparse

from runtime.commands.common import check_request, eta, positive_int, solver_arg, spacing_arg


def register(sub) -> None:
    from runtime.providers import PROVIDERS
    from runtime.sampler import MODES

    p = sub.add_parser("parity", help="compare the onnxruntime sampler with eager torch, step by step")
    p.add_argument("bundle", help="bundle directory from `diffzoo export`")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    p.add_argument("--steps", type=positive_int, default=50, help="solver steps (default 50)")
    solver_arg(p)
    spacing_arg(p)
    p.add_argument("--batch", type=positive_int, default=4, help="images compared (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of x_T and the per-step noise")
    p.add_argument("--eta", type=eta, default=0.0, help="0 = deterministic (default), 1 = DDPM-like (ddim only)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)} (default all)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import runtime

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    check_request(args.bundle, args.steps, modes, args.eta, args.spacing, args.solver)
    report = runtime.parity(args.bundle, provider=args.provider, num_steps=args.steps, batch=args.batch, seed=args.seed,
                            modes=modes, eta=args.eta, strict=args.provider == "cuda", solver=args.solver,
                            spacing=args.spacing)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_table())
    return 0 if report.passed else 1

"""``diffzoo eval``: sample a bundle or training run and measure quality against real data."""

from __future__ import annotations

import argparse

from runtime.apps.commands.common import (
    check_out,
    class_args,
    grid_scale,
    parse_classes,
    parse_guidance,
    positive_int,
    request_args,
    request_fields,
    write_json,
)


def register(sub) -> None:
    from runtime.apps.evaluate import EVAL_N
    from runtime.providers import PROVIDERS
    from runtime.requests import MODES, SampleRequest
    from zoo.conditioning import MAX_GUIDANCE

    p = sub.add_parser("eval", help="sample a bundle or training run and measure quality against real data")
    p.add_argument("target", help="bundle directory, or training run directory (exported to a temporary bundle first)")
    p.add_argument("--data", default=None, help="data spec to measure against (default: the one the bundle records)")
    # not --n: under torchrun, argparse would take "--n" for an abbreviation of torchrun's own --nnodes
    p.add_argument("--samples", type=positive_int, default=EVAL_N, help=f"number of samples (default {EVAL_N}, the digits' held-out size)")
    request_args(p)
    p.add_argument("--mode", choices=MODES, default=SampleRequest.mode, help=f"runtime mode (default {SampleRequest.mode})")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    class_args(p, all_help="every class in turn, the default with --guidance",
               guidance_help=f"classifier-free guidance w in 0..{MAX_GUIDANCE:g} (default 1 with --class), or several comma-separated: the "
                             "trade-off curve (the same samples at each w), e.g. 0,1,2,3,5")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--grid", default=None, help="also write up to 64 samples as a PNG grid (scaled up)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.apps.evaluate import evaluate

    if args.json:
        check_out(args.json, suffixes=None)
    if args.grid:
        check_out(args.grid)
    res, x = evaluate(args.target, data=args.data, n=args.samples, provider=args.provider, progress=True,
                      labels=parse_classes(args.classes), guidance=parse_guidance(args.guidance), **request_fields(args))
    if res is None:  # not rank 0 under torchrun
        return 0
    print(f"quality of {res['target']}: {res['samples']} samples, {res['solver']} {res['steps']} steps ({res['spacing']}), eta {res['eta']}, "
          f"{res['mode']} mode on {res['provider']}, {res['processes']} process(es); against {res['data']}; "
          f"labels: {res['labels']}")
    print(res.pop("text"))
    met = True  # a curve is a trade-off: each row carries its own verdict
    if "quality" in res:
        met = res["quality"]["met"]
        print("targets met" if met else "targets NOT met (exit status 1)")
    if args.json:
        write_json(args.json, res, "report")
    if args.grid:
        from zoo.images import save_grid, save_labelled_rows

        if "curve" in res:  # a row per guidance value, the same seeds and labels in every row
            per = min(x.shape[1], 20)
            save_labelled_rows(args.grid, x[:, :per].reshape(-1, *x.shape[2:]), [f"w={c['guidance']:g}" for c in res["curve"]],
                               scale=grid_scale(x))
        else:
            save_grid(args.grid, x[:64], scale=grid_scale(x), pad_value=96)
        print(f"samples written to {args.grid}")
    return 0 if met else 1

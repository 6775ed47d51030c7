"""``diffzoo demo``: train, export, sample, check parity and quality: the whole product in minutes."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from runtime.providers import PROVIDERS

    p = sub.add_parser("demo", help="train, export, sample, check parity and quality: the whole product in minutes")
    p.add_argument("--out", default="diffzoo-demo",
                   help="output directory (default ./diffzoo-demo; an earlier demo there is replaced)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    p.add_argument("--fast", action="store_true", help="tiny sizes: every stage runs in seconds, nothing is trained to quality")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.demo import FAST, DemoConfig, format_summary, run_demo

    cfg = FAST if args.fast else DemoConfig()
    summary = run_demo(args.out, cfg, provider=args.provider, progress=True, say=print)
    print()
    print(format_summary(summary))
    return 0 if summary["parity_passed"] else 1

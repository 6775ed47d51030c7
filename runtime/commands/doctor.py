"""``diffzoo doctor``: versions, execution providers and why CUDA does or does not load."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("doctor", help="versions, execution providers and why CUDA does or does not load")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.doctor import diagnose

    rows = diagnose()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0

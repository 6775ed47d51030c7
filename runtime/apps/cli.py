"""The ``diffzoo`` command line: one module per command in ``runtime/commands/``, each importing what it needs.

The only place in diffzoo that prints. User errors (ValueError, TypeError, OSError raised for bad
input, and a provider that cannot run here) become one line on stderr and exit status 2; a sampler
or a training run that diverged, and an export that fails verification, are one line and exit 1;
DIFFZOO_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from runtime.apps.commands.common import Terminated
from zoo.validate import install_hint

EXIT_USER_ERROR = 2
# What the `torch` extra installs (pyproject.toml): training, export, eager sampling and the quality metric.
# `sample`, `serve` and `request` run without it (the deployment core imports no torch: tests/test_layers.py).
TORCH_EXTRA = ("torch", "onnxscript", "safetensors", "sklearn", "torchmetrics")

# command modules in the order `diffzoo --help` lists them; each has register(subparsers) and run(args)
COMMANDS = ("eager_sample", "export", "sample", "serve", "request", "parity", "eval", "train", "demo", "bench", "doctor")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2, and every option has help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")

    def add_argument(self, *names, **kwargs):  # type: ignore[override]
        if not kwargs.get("help"):
            raise TypeError(f"{self.prog} {'/'.join(names)}: every option needs help text")
        return super().add_argument(*names, **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffzoo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffzoo", description="Build, train, export and deploy small diffusion denoisers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"diffzoo {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"runtime.apps.commands.{name}").register(sub)
    return parser


def _terminate(signum, frame):  # noqa: ARG001
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    status = _main(argv)
    joined = sys.modules.get("zoo.training.distributed")  # loaded only by a command that can join a torchrun group
    if joined is not None:
        joined.exit_if_joined(status)  # under torchrun: leave the group and end here (zoo.training.distributed)
    return status


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like an exception: staged directories and temp files are removed, nothing partial is left
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in (*TORCH_EXTRA, "diffusers") or os.environ.get("DIFFZOO_DEBUG"):
            raise
        extra = "diffusers" if top == "diffusers" else "torch"
        print(f"diffzoo {args.command}: error: this command needs {top}, which is not installed: "
              f"{install_hint(extra)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # noqa: BLE001  sorted below: a user error or a failure is one line, a bug a traceback
        status = _exit_status(e)
        if status is None or os.environ.get("DIFFZOO_DEBUG"):
            raise
        print(f"diffzoo {args.command}: error: {e}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print(f"diffzoo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"diffzoo {args.command}: terminated (SIGTERM); nothing partial was left", file=sys.stderr)
        return 143
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_status(e: Exception) -> int | None:
    """1 for a run that failed (diverged, failed verification), 2 for bad input, None for a bug (a traceback)."""
    from export.verify import ExportVerificationError
    from runtime.apps.serve.client import ServerError
    from runtime.apps.serve.server import ServeError
    from runtime.providers import ProviderUnavailableError
    from runtime.runs import ORT_ERRORS, GraphRunError
    from zoo.diffusion import NonFiniteSampleError
    from zoo.training import NonFiniteLossError

    if isinstance(e, ServerError):  # the server refused the request (400) or failed on it
        return EXIT_USER_ERROR if e.status == 400 else 1
    if isinstance(e, (NonFiniteSampleError, NonFiniteLossError, ExportVerificationError, ServeError, GraphRunError,
                      *ORT_ERRORS)):
        return 1  # GraphRunError, ORT_ERRORS: a graph that loaded but failed while running (out of memory, a bad op)
    if isinstance(e, (ValueError, TypeError, OSError, ProviderUnavailableError)):
        return EXIT_USER_ERROR
    return None


if __name__ == "__main__":
    sys.exit(main())

"""TorchScript export (``torch.jit.trace``), kept in one module of its own.

TorchScript is deprecated upstream in favour of ``torch.export``; diffzoo still ships it for
deployments that load ``.pt`` files from C++. Isolating it here makes that swap a one-file change.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["save_traced", "load_traced"]


def _ignore_deprecation() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


def save_traced(module: torch.nn.Module, example_args: tuple[torch.Tensor, ...], path: str | os.PathLike) -> None:
    """Trace ``module`` on ``example_args`` (eval mode, no grad) and save it with ``torch.jit.save``."""
    with warnings.catch_warnings(), torch.no_grad():
        _ignore_deprecation()
        torch.jit.save(torch.jit.trace(module.eval(), example_args, check_trace=False), str(path))


def load_traced(source: str | os.PathLike | bytes) -> torch.jit.ScriptModule:
    """A traced module from a file, or from bytes already verified against a manifest (``read_verified``)."""
    import io

    with warnings.catch_warnings():
        _ignore_deprecation()
        if isinstance(source, bytes):
            return torch.jit.load(io.BytesIO(source), map_location="cpu")
        return torch.jit.load(str(source), map_location="cpu")

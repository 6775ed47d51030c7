"""Data parallelism under ``torchrun``: join the process group once and say which rank this is."""

from __future__ import annotations

import atexit
import logging
import os
import sys

import torch

__all__ = ["init_distributed", "exit_if_joined"]


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """(rank, world size) under torchrun, joining the process group once; (0, 1) otherwise.

    ``backend`` defaults to nccl where CUDA is available (DDP training), else gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
            # left to interpreter exit, the group's threads were sometimes destroyed still joinable: a rank
            # aborted ("terminate called without an active exception") after its work was done (seen once in CI)
            atexit.register(_leave)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def exit_if_joined(status: int) -> None:
    """End a torchrun process that joined the group: leave it, flush, and exit without interpreter finalisation.

    A rank's work is done and its files are closed when its command returns; what remained was the
    interpreter's teardown, where a rank still aborted now and then ("terminate called without an
    active exception": a C++ thread of torch destroyed while joinable; CI, twice, with the group
    already destroyed at exit). ``os._exit`` skips that teardown. A no-op outside a process group.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

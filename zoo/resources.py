"""How much memory this machine has free, and a refusal that says so before a large allocation.

Torch-free: the deployment runtime checks its output arrays with it too.
"""

from __future__ import annotations

import os

__all__ = ["available_memory", "check_fits", "activation_bytes", "InsufficientMemoryError"]


class InsufficientMemoryError(ValueError):
    """A request whose estimated memory exceeds what is available here; the message gives both."""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_fits(nbytes: float, what: str, hint: str = "") -> None:
    """Raise ``InsufficientMemoryError`` if ``nbytes`` (an estimate, stated in ``what``) exceeds available memory."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise InsufficientMemoryError(f"{what} needs about {_gb(nbytes)}, more than the {_gb(avail)} of memory "
                                      f"available here{'; ' + hint if hint else ''}")


def activation_bytes(batch: int, channels: int, hidden: int, height: int, width: int) -> int:
    """A lower bound on one forward pass's float32 memory: input, noise and output images and two hidden feature maps.

    What the refusals before training, export, parity and eager sampling compare with the memory
    available: a run over it cannot succeed; one under it may still fail inside torch or onnxruntime.
    """
    return 4 * batch * height * width * (3 * channels + 2 * hidden)


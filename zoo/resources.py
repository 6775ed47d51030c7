"""How much memory this machine has free, and a refusal that says so before a large allocation.

Torch-free: the deployment runtime checks its output arrays with it too.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_memory", "cgroup_available", "check_fits", "activation_bytes", "InsufficientMemoryError"]


class InsufficientMemoryError(ValueError):
    """A request whose estimated memory exceeds what is available here; the message gives both."""


def available_memory() -> int | None:
    """Bytes a new allocation of this process can still get: the least of the machine's free memory, its memory
    cgroup's limit less its use (a container's or a pod's limit), and ``ulimit -v`` less what the process has mapped.
    None where none of them is known."""
    limit = _tightest()
    return None if limit is None else limit[0]


def _tightest() -> tuple[int, str] | None:
    """(bytes, what limits them) of the tightest of the three limits."""
    known = [(v, what) for v, what in ((_machine_available(), "of memory available here"),
                                       (cgroup_available(), "its memory cgroup (a container's limit) still allows"),
                                       (_address_space_available(), "ulimit -v still allows this process"))
             if v is not None]
    return (max(0, min(known)[0]), min(known)[1]) if known else None


def _machine_available() -> int | None:
    """Linux ``MemAvailable``, or the free physical pages elsewhere."""
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


_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge number (9223372036854771712), v2 as "max"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _NO_LIMIT else value


def _inactive_file(stat: Path, key: str) -> int:
    """Reclaimable page cache charged to a cgroup (counted in its use, given back before the limit kills anyone)."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


# Each cgroup version's memory controller: (limit file, use file, reclaimable page cache's key in memory.stat).
_CGROUP_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                 1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}


def cgroup_available(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What this process's memory cgroup and its ancestors still allow (limit less use, reclaimable cache given
    back), the least of them; None without a limit. cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes``)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy (under "unified" on a hybrid v1 machine)
            version, base = 2, root if (root / "cgroup.controllers").exists() else root / "unified"
        elif "memory" in controllers.split(","):
            version, base = 1, root / "memory"
        else:
            continue
        limit, usage, cache = _CGROUP_FILES[version]
        d = base / path.lstrip("/")
        while True:  # a limit may sit on any ancestor
            cap = _read_int(d / limit)
            if cap is not None:
                used = _read_int(d / usage) or 0
                found.append(cap - max(0, used - _inactive_file(d / "memory.stat", cache)))
            if d == base or base not in d.parents:
                break
            d = d.parent
    return min(found) if found else None


def _address_space_available() -> int | None:
    """``ulimit -v`` (RLIMIT_AS) less this process's mapped address space (``VmSize``); None without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mapped = 0
    return soft - mapped


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_fits(nbytes: float, what: str, hint: str = "") -> None:
    """Raise ``InsufficientMemoryError`` if ``nbytes`` (an estimate, stated in ``what``) exceeds the memory this process
    can still get (``available_memory``: free memory, the cgroup's limit, ``ulimit -v``), naming the limit."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        limit = _tightest()
        which = limit[1] if limit is not None and limit[0] == avail else "of memory available here"
        raise InsufficientMemoryError(f"{what} needs about {_gb(nbytes)}, more than the {_gb(avail)} {which}"
                                      f"{'; ' + hint if hint else ''}")


def activation_bytes(batch: int, channels: int, hidden: int, height: int, width: int) -> int:
    """A lower bound on one forward pass's float32 memory: input, noise and output images and two hidden feature maps.

    What the refusals before training, export, parity and eager sampling compare with the memory
    available: a run over it cannot succeed; one under it may still fail inside torch or onnxruntime.
    """
    return 4 * batch * height * width * (3 * channels + 2 * hidden)


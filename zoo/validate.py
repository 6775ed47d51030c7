"""Argument checks shared by every public entry point: one message shape, numpy scalars welcome.

``check_int`` accepts any integral number but bool (``5``, ``np.int64(5)``) and ``check_real``
any real number but bool (``0.5``, ``np.float32(0.5)``); both return a plain Python value, so
what reaches a manifest or a JSON log serialises. Torch-free.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_int", "check_real", "first_line", "install_hint"]


def install_hint(extra: str) -> str:
    """How to install one of diffzoo's extras: from its checkout (diffzoo is not published on PyPI)."""
    return f"pip install -e '.[{extra}]' in the diffzoo checkout (README: set-up)"


def check_int(name: str, v: Any, low: int | None = None, high: int | None = None) -> int:
    """``v`` as an int, or ``ValueError`` naming ``name``, ``v`` and the accepted range."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (low is not None and v < low) or (
            high is not None and v > high):
        raise ValueError(f"{name}={_show(v)} is invalid: expected an integer {_range(low, high)}".rstrip())
    return int(v)


def check_real(name: str, v: Any, low: float | None = None, high: float | None = None, *, open_low: bool = False,
               hint: str = "") -> float:
    """``v`` as a finite float, or ``ValueError`` naming ``name``, ``v`` and the accepted range."""
    ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if open_low else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        rng = _range(low, high, "<" if open_low else "<=")
        raise ValueError(f"{name}={_show(v)} is invalid: expected a finite number {rng}{' (' + hint + ')' if hint else ''}".rstrip())
    return float(v)


def _show(v: Any) -> str:
    """A number as the user wrote it (``1.5``, not ``np.float32(1.5)``); anything else as its repr."""
    return str(v) if isinstance(v, numbers.Number) else repr(v)


def _range(low, high, low_op: str = "<=") -> str:
    if low is not None and high is not None:
        return f"in {low}..{high}" if low_op == "<=" else f"with {low} < x <= {high}"
    if low is not None:
        return f">= {low}" if low_op == "<=" else f"> {low}"
    return f"<= {high}" if high is not None else ""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name if it has none): what a one-line error quotes."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


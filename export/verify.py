"""Verification of exported artifacts against eager torch, in optimum's order.

For each artifact and format: output names, then shapes, then values (max |diff| against a named
tolerance). All failures are collected and raised together, so one export run reports everything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["STEP_ATOL", "LOOP_ATOL", "Check", "ExportVerificationError", "compare_outputs", "raise_on_failures"]

# fp32, one network evaluation or one DDIM update: the exported graph and eager torch run the same
# ops with different kernels and summation orders, which moves O(1) outputs by about 1e-6.
STEP_ATOL = 1e-5
# fp32, the whole loop (up to 50 steps): per-step rounding compounds through 1/sqrt(alpha-bar_t) at
# high t, which amplifies early differences by up to ~100x before the x0 clip bounds them.
LOOP_ATOL = 1e-3


@dataclass
class Check:
    artifact: str
    format: str
    shape: dict[str, int]  # axis sizes used (batch, height, width[, steps])
    max_abs_diff: float | None
    atol: float
    passed: bool
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class ExportVerificationError(RuntimeError):
    """One or more exported artifacts disagree with eager torch; the message lists all of them."""

    def __init__(self, failures: list[Check]):
        self.failures = failures
        super().__init__(
            f"export verification failed for {len(failures)} artifact(s): "
            + "; ".join(f"{c.artifact}/{c.format}: {c.error}" for c in failures)
        )


def compare_outputs(
    artifact: str, fmt: str, shape: dict[str, int], got: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float
) -> Check:
    """Names, then shapes, then values; the first mismatch class found is the error."""
    if list(got) != list(expected):
        return Check(artifact, fmt, shape, None, atol, False, f"output names {list(got)} != expected {list(expected)}")
    for name in expected:
        if got[name].shape != expected[name].shape:
            return Check(artifact, fmt, shape, None, atol, False,
                         f"output {name!r} has shape {got[name].shape}, expected {expected[name].shape}")
    diff = max(float(np.max(np.abs(got[n].astype(np.float64) - expected[n]), initial=0.0)) for n in expected)
    if not np.isfinite(diff) or diff > atol:
        return Check(artifact, fmt, shape, diff, atol, False, f"max |diff| {diff:.3g} > atol {atol:g}")
    return Check(artifact, fmt, shape, diff, atol, True)


def raise_on_failures(checks: list[Check]) -> None:
    failures = [c for c in checks if not c.passed]
    if failures:
        raise ExportVerificationError(failures)

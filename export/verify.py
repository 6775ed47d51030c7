"""Verification of exported artifacts against eager torch, in optimum's order.

For each artifact and format: output names, then shapes, then values (max |diff| against a named
tolerance). All failures are collected and raised together, so one export run reports everything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "STEP_ATOL", "LOOP_ATOL", "INT8_STEP_RTOL", "INT8_LOOP_RTOL",
    "Check", "ExportVerificationError", "compare_outputs", "relative_rms", "raise_on_failures",
]

# fp32, one network evaluation or one DDIM update: the exported graph and eager torch run the same
# ops with different kernels and summation orders, which moves O(1) outputs by about 1e-6.
STEP_ATOL = 1e-5
# fp32, the whole loop (up to 50 steps): per-step rounding compounds through 1/sqrt(alpha-bar_t) at
# high t, which amplifies early differences by up to ~100x before the x0 clip bounds them.
LOOP_ATOL = 1e-3
# int8 (inner convolutions quantized, export.quantize): an approximation by design, so its error is
# judged relative to the output's size, rms(got - expected) / rms(expected), and recorded in the
# manifest. Measured: the demo model 1.5-2.7% per step on epsilon and 3% on the image after 20 steps;
# untrained test models up to 10% after 50 steps. The bounds catch a broken graph (wrong ranges or
# scales give errors of the order of the output itself, ~1.0), they are not a quality claim: the
# drift of a given model is in its manifest and in `diffzoo bench`.
INT8_STEP_RTOL = 0.1
INT8_LOOP_RTOL = 0.3


@dataclass
class Check:
    artifact: str
    format: str
    shape: dict[str, int]  # axis sizes used (batch, height, width[, steps])
    max_abs_diff: float | None
    atol: float | None  # the bound on max |diff| (fp32), or None where rtol is the bound (int8)
    passed: bool
    error: str | None = None
    rel_rms_diff: float | None = None  # rms(got - expected) / rms(expected)
    rtol: float | None = None

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


def relative_rms(got: np.ndarray, expected: np.ndarray) -> float:
    """rms(got - expected) / rms(expected), in float64."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.sqrt(np.mean((got - expected) ** 2)) / max(np.sqrt(np.mean(expected**2)), 1e-12))


def compare_outputs(
    artifact: str, fmt: str, shape: dict[str, int], got: dict[str, np.ndarray], expected: dict[str, np.ndarray],
    atol: float | None, rtol: float | None = None,
) -> Check:
    """Names, then shapes, then values; the first mismatch class found is the error.

    Values are bounded by ``atol`` on max |diff|, or, with ``rtol``, by the relative RMS difference.
    """
    if list(got) != list(expected):
        return Check(artifact, fmt, shape, None, atol, False, f"output names {list(got)} != expected {list(expected)}", rtol=rtol)
    for name in expected:
        if got[name].shape != expected[name].shape:
            return Check(artifact, fmt, shape, None, atol, False,
                         f"output {name!r} has shape {got[name].shape}, expected {expected[name].shape}", rtol=rtol)
    diff = max(float(np.max(np.abs(got[n].astype(np.float64) - expected[n]), initial=0.0)) for n in expected)
    rel = max(relative_rms(got[n], expected[n]) for n in expected)
    check = Check(artifact, fmt, shape, diff, atol, True, rel_rms_diff=rel, rtol=rtol)
    if not np.isfinite(diff):
        check.passed, check.error = False, f"non-finite output (max |diff| {diff})"
    elif rtol is not None and rel > rtol:
        check.passed, check.error = False, f"relative RMS diff {rel:.3g} > rtol {rtol:g} (max |diff| {diff:.3g})"
    elif atol is not None and diff > atol:
        check.passed, check.error = False, f"max |diff| {diff:.3g} > atol {atol:g}"
    return check


def raise_on_failures(checks: list[Check]) -> None:
    failures = [c for c in checks if not c.passed]
    if failures:
        raise ExportVerificationError(failures)

"""Verification of exported artifacts against eager torch, in optimum's order.

For each artifact and format: output names, then shapes, then values (max |diff| against a named
tolerance). All failures are collected and raised together, so one export run reports everything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from zoo.validate import check_real

__all__ = [
    "FP32_FACTOR", "FP32_FLOOR_ULPS", "INT8_STEP_RTOL", "INT8_LOOP_RTOL", "MEANINGFUL_ATOL",
    "Check", "ExportVerificationError", "compare_outputs", "derived_atol", "relative_rms", "raise_on_failures",
]

# fp32 bounds are derived, per artifact and per export, from the error float32 itself makes on that
# computation: the eager reference is run twice on the same inputs, in float32 and in float64, and
#   atol = max(FP32_FACTOR * max|ref32 - ref64|, FP32_FLOOR_ULPS * eps32 * max|ref64|).
# The exported graph runs the same float32 ops with other kernels and summation orders, so its
# distance to ref32 is of the order of ref32's own distance to ref64 (at most about twice it when
# the two errors are independent); FP32_FACTOR leaves room for that and for kernels that round a
# little worse, while a wrong graph errs by O(output), orders of magnitude beyond. The float64 run
# measures every amplification on the way: the fused step's 1/sqrt(alpha-bar_t) on epsilon errors
# at high t, and the compounding over the whole loop, for this model and these weights, trained or
# not. The floor keeps a computation that float32 happens to get exactly right (a bound of 0) from
# failing on one rounding. Measured: trained and random models sit at 1.1-3x their reference error
# (docs/QUALITY.md, tests/test_export.py).
FP32_FACTOR = 10.0
FP32_FLOOR_ULPS = 16
# int8 (inner convolutions quantized, export.quantize): an approximation by design, so its error is
# judged relative to the output's size, rms(got - expected) / rms(expected), and recorded in the
# manifest. Measured: the demo model 1.5-2.7% per step on epsilon and 3% on the image after 20 steps;
# untrained test models up to 10% after 50 steps. The bounds catch a broken graph (wrong ranges or
# scales give errors of the order of the output itself, ~1.0), they are not a quality claim: the
# drift of a given model is in its manifest and in `diffzoo bench`.
INT8_STEP_RTOL = 0.1
INT8_LOOP_RTOL = 0.3
# A derived bound above this checks little on data in [-1, 1] (a wrong graph errs by O(1), the range is 2): export
# verifies a whole-loop graph over fewer steps then (export.bundle.verify_steps) and says so in the check's note.
MEANINGFUL_ATOL = 0.1


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
    reference_error: float | None = None  # max |eager float32 - eager float64|, what atol is derived from
    atol_source: str | None = None  # "derived" (from reference_error) or "user" (export_bundle(atol=...))
    note: str | None = None  # what the bound means here, where it means less than usual (MEANINGFUL_ATOL)

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


def derived_atol(ref32: dict[str, np.ndarray], ref64: dict[str, np.ndarray]) -> tuple[float, float]:
    """``(atol, reference_error)`` for float32 outputs whose float64 reference is ``ref64`` (see FP32_FACTOR)."""
    err = max(float(np.max(np.abs(np.asarray(ref32[n], np.float64) - ref64[n]), initial=0.0)) for n in ref64)
    scale = max(float(np.max(np.abs(ref64[n]), initial=0.0)) for n in ref64)
    if not (np.isfinite(err) and np.isfinite(scale)):
        raise ValueError(f"the eager reference is not finite (max |ref32 - ref64| = {err}, max |ref64| = {scale})")
    return max(FP32_FACTOR * err, FP32_FLOOR_ULPS * float(np.finfo(np.float32).eps) * scale), err


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


def check_atol(atol: float | None) -> float | None:
    """A user's bound on max |diff|, or ``ValueError``: 0 < atol < 1 (samples lie in [-1, 1]; 1 or more could never fail)."""
    if atol is None:
        return None
    atol = check_real("atol", atol, 0.0, 1.0, open_low=True, hint="samples lie in [-1, 1]; or None to derive each bound")
    if atol >= 1.0:
        raise ValueError(f"atol={atol!r} is invalid: expected 0 < atol < 1 (samples lie in [-1, 1], so a bound of 1 or more "
                         "could never fail); or None to derive each bound")
    return atol

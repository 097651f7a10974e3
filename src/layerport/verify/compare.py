"""Comparing one engine's outputs with another's, element by element.

A value passes when ``|actual - expected| <= atol + rtol * |expected|``, with the
trusted engine's output (eager PyTorch's, usually) as ``expected``. Every comparison reports enough to see why it
failed and what it would take to pass: the largest errors, where the worst one
is, and the smallest ``atol`` (at the given ``rtol``) and ``rtol`` (at the given
``atol``) that would have passed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from layerport.dtypes import Tolerance


@dataclass(frozen=True)
class Comparison:
    """One output at one verification case."""

    output: str
    case: str
    passed: bool
    problem: str | None = None
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0  # max |error| / max |expected|: see relative_error
    worst_index: tuple[int, ...] = ()
    worst_actual: float = 0.0
    worst_expected: float = 0.0
    needed_atol: float = 0.0
    needed_rtol: float = 0.0
    engines: tuple[str, str] = ("onnxruntime", "eager")  # (actual, expected)
    # Under the float64 verdict (verify.verdict): eager's own error in the file's
    # precision, the error allowed, and whether eager was too far off to judge by.
    precision_cost: float | None = None
    allowed: float | None = None
    inconclusive: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["worst_index"] = list(self.worst_index)
        data["engines"] = list(self.engines)
        return data

    @property
    def overshoot(self) -> float:
        """How far over its bound it came: error / allowed under the verdict, else the atol needed."""
        if self.allowed is not None:
            return self.max_abs_error / self.allowed if self.allowed > 0 else math.inf
        return self.needed_atol

    def describe(self) -> str:
        """One line for a failure message."""
        if self.problem:
            return f"{self.output} at {self.case}: {self.problem}"
        worst = (
            f"worst element {list(self.worst_index)} ({self.engines[0]} {self.worst_actual:.6g}, "
            f"{self.engines[1]} {self.worst_expected:.6g})"
        )
        if self.allowed is not None:
            return (
                f"{self.output} at {self.case}: export error {self.max_abs_error:.3g} against "
                f"{self.engines[1]}, precision cost {self.precision_cost:.3g}, allowed "
                f"{self.allowed:.3g}; {worst}"
            )
        # The worst element is the one furthest over the tolerance, which need not
        # be the one with the largest absolute error.
        return (
            f"{self.output} at {self.case}: max abs error {self.max_abs_error:.3g}; {worst}; "
            f"would pass with atol >= {self.needed_atol:.3g} "
            f"or rtol >= {self.needed_rtol:.3g}"
        )


# Integer and boolean outputs (ids, masks) have no rounding to allow for.
EXACT = Tolerance(0.0, 0.0)


def is_float(array: np.ndarray) -> bool:
    """Whether ``array`` holds floating-point values (bfloat16, ml_dtypes', included)."""
    return array.dtype.kind == "f" or array.dtype.name == "bfloat16"


def relative_error(max_abs_error: float, max_magnitude: float) -> float:
    """The relative error of one output: max |error| / max |expected| over the output.

    One definition for every report and target. Element by element, values near
    zero would give relative errors of 200% where nothing is wrong.
    """
    if max_magnitude > 0:
        return max_abs_error / max_magnitude
    return 0.0 if max_abs_error == 0 else math.inf


def compare_arrays(
    output: str,
    case: str,
    actual: np.ndarray,
    expected: np.ndarray,
    tolerance: Tolerance,
    engines: tuple[str, str] = ("onnxruntime", "eager"),
) -> Comparison:
    """Compare shape, dtype and values of one output; ``engines`` names (actual, expected)."""
    actual_engine, expected_engine = engines
    if actual.shape != expected.shape:
        problem = (
            f"shape {list(actual.shape)} from {actual_engine}, "
            f"{list(expected.shape)} from {expected_engine}"
        )
        return Comparison(output, case, passed=False, problem=problem, engines=engines)
    if actual.dtype != expected.dtype:
        problem = (
            f"dtype {actual.dtype} from {actual_engine}, {expected.dtype} from {expected_engine}"
        )
        return Comparison(output, case, passed=False, problem=problem, engines=engines)
    for engine, values in ((actual_engine, actual), (expected_engine, expected)):
        bad = ~np.isfinite(values)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            problem = (
                f"{engine} output holds {int(bad.sum())} NaN or Inf values, first at {list(index)}"
            )
            return Comparison(
                output, case, passed=False, problem=problem, worst_index=index, engines=engines
            )
    if actual.size == 0:
        return Comparison(output, case, passed=True, engines=engines)
    # Compare in float64 so the error itself is not rounded away.
    wide_actual, wide_expected = actual.astype(np.float64), expected.astype(np.float64)
    error = np.abs(wide_actual - wide_expected)
    magnitude = np.abs(wide_expected)
    # A tolerance of the output's range adds to atol, once per output (int8's rule).
    atol = tolerance.atol + tolerance.of_range * float(magnitude.max())
    excess = error - tolerance.rtol * magnitude
    worst = np.unravel_index(int(np.argmax(excess - atol)), error.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        needed_rtol = np.where(error <= atol, 0.0, (error - atol) / magnitude)
    return Comparison(
        output=output,
        case=case,
        passed=bool(np.all(error <= atol + tolerance.rtol * magnitude)),
        max_abs_error=float(error.max()),
        max_rel_error=relative_error(float(error.max()), float(magnitude.max())),
        worst_index=tuple(int(i) for i in worst),
        worst_actual=float(wide_actual[worst]),
        worst_expected=float(wide_expected[worst]),
        needed_atol=float(max(0.0, excess.max())),
        needed_rtol=float(np.where(np.isnan(needed_rtol), np.inf, needed_rtol).max()),
        engines=engines,
    )

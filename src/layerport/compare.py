"""Comparing an export's outputs with eager PyTorch's, element by element.

A value passes when ``|actual - expected| <= atol + rtol * |expected|``, with the
eager output as ``expected``. Every comparison reports enough to see why it
failed and what it would take to pass: the largest errors, where the worst one
is, and the smallest ``atol`` (at the given ``rtol``) and ``rtol`` (at the given
``atol``) that would have passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from layerport.spec import Tolerance


@dataclass(frozen=True)
class Comparison:
    """One output at one verification case."""

    output: str
    case: str
    passed: bool
    problem: str | None = None
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    worst_index: tuple[int, ...] = ()
    worst_actual: float = 0.0
    worst_expected: float = 0.0
    needed_atol: float = 0.0
    needed_rtol: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["worst_index"] = list(self.worst_index)
        return data

    def describe(self) -> str:
        """One line for a failure message."""
        if self.problem:
            return f"{self.output} at {self.case}: {self.problem}"
        # The worst element is the one furthest over the tolerance, which need not
        # be the one with the largest absolute error.
        return (
            f"{self.output} at {self.case}: max abs error {self.max_abs_error:.3g}; worst "
            f"element {list(self.worst_index)} (onnxruntime {self.worst_actual:.6g}, eager "
            f"{self.worst_expected:.6g}); would pass with atol >= {self.needed_atol:.3g} "
            f"or rtol >= {self.needed_rtol:.3g}"
        )


def compare_arrays(
    output: str, case: str, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance
) -> Comparison:
    """Compare shape, dtype and values of one output."""
    if actual.shape != expected.shape:
        problem = f"shape {list(actual.shape)} from onnxruntime, {list(expected.shape)} from eager"
        return Comparison(output, case, passed=False, problem=problem)
    if actual.dtype != expected.dtype:
        problem = f"dtype {actual.dtype} from onnxruntime, {expected.dtype} from eager"
        return Comparison(output, case, passed=False, problem=problem)
    for engine, values in (("onnxruntime", actual), ("eager", expected)):
        bad = ~np.isfinite(values)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            problem = (
                f"{engine} output holds {int(bad.sum())} NaN or Inf values, first at {list(index)}"
            )
            return Comparison(output, case, passed=False, problem=problem, worst_index=index)
    if actual.size == 0:
        return Comparison(output, case, passed=True)
    # Compare in float64 so the error itself is not rounded away.
    wide_actual, wide_expected = actual.astype(np.float64), expected.astype(np.float64)
    error = np.abs(wide_actual - wide_expected)
    magnitude = np.abs(wide_expected)
    excess = error - tolerance.rtol * magnitude
    worst = np.unravel_index(int(np.argmax(excess - tolerance.atol)), error.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(magnitude > 0, error / magnitude, np.where(error > 0, np.inf, 0.0))
        needed_rtol = np.where(error <= tolerance.atol, 0.0, (error - tolerance.atol) / magnitude)
    return Comparison(
        output=output,
        case=case,
        passed=bool(np.all(error <= tolerance.atol + tolerance.rtol * magnitude)),
        max_abs_error=float(error.max()),
        max_rel_error=float(relative.max()),
        worst_index=tuple(int(i) for i in worst),
        worst_actual=float(wide_actual[worst]),
        worst_expected=float(wide_expected[worst]),
        needed_atol=float(max(0.0, excess.max())),
        needed_rtol=float(np.where(np.isnan(needed_rtol), np.inf, needed_rtol).max()),
    )

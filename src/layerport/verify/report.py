"""What a verification found, as data: the CLI renders it, the file's metadata records it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from layerport.dtypes import Tolerance
from layerport.verify.compare import Comparison

if TYPE_CHECKING:
    from layerport.config import LayerConfig
    from layerport.runtime.metadata import ExportRecord

# Failing cases whose inputs and outputs a report keeps: enough to hand one on,
# without holding every case's arrays.
KEPT_FAILURES = 3


@dataclass(frozen=True)
class FailedRun:
    """One failing grid case: its inputs, and every engine's outputs on them, by engine name."""

    case: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, dict[str, np.ndarray]]


@dataclass
class VerificationReport:
    """Everything a verification checked, and how close each output came.

    ``engines`` is (actual, expected): the engine under test and the one trusted.
    ``tolerance`` ``None`` means the float64 verdict (``verify.verdict``): every
    judged comparison is then the engine against float64 eager, and ``costs``
    what eager in ``dtype`` loses against float64 at the same case.
    """

    layer: str
    dtype: str
    tolerance: Tolerance | None
    export_dims: dict[str, int]
    grid: dict[str, list[int]]
    trials: int
    engines: tuple[str, str] = ("onnxruntime", "eager")
    structure_problems: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    streaming: str | None = None
    notes: list[str] = field(default_factory=list)  # what may explain a failure, said first
    # The precision's cost: eager in ``dtype`` against the layer in float64, by case.
    costs: list[Comparison] = field(default_factory=list)
    quantization: str | None = None  # the recipe of a quantized file (int8), if any
    # Optional inputs the first draw at every size leaves out, so their zero default is checked.
    left_out: list[str] = field(default_factory=list)
    # The first failing grid cases' arrays (at most KEPT_FAILURES), to reproduce them.
    failed_runs: list[FailedRun] = field(default_factory=list)
    # The same file in a second runtime (onnx-reference) against the first, if asked for.
    second_opinion: VerificationReport | None = None
    # The runtime matrix, if asked for: the file in each named runtime, judged as
    # this report judged it; a runtime that could not run it, with its error;
    # and those skipped because they are not installed here, with why.
    runtimes: dict[str, VerificationReport] = field(default_factory=dict)
    runtime_errors: dict[str, str] = field(default_factory=dict)
    runtimes_skipped: dict[str, str] = field(default_factory=dict)
    # The least scale of each output's verdict floor: 1 for a sigmoid's (verdict.BOUNDED_OPS).
    output_scales: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            not self.structure_problems
            and all(c.passed for c in self.comparisons)
            and (self.second_opinion is None or self.second_opinion.passed)
            and not self.failed_runtimes()
        )

    def failed_runtimes(self) -> list[str]:
        """The matrix's runtimes that disagree with the layer, or could not run the file."""
        failed = [name for name, report in self.runtimes.items() if not report.passed]
        return failed + list(self.runtime_errors)

    @property
    def inconclusive(self) -> list[Comparison]:
        """Cases where eager in ``dtype`` was itself too far from float64 to judge the file by."""
        return [comparison for comparison in self.comparisons if comparison.inconclusive]

    def rule(self) -> str:
        """How the comparisons were judged, in words: the tolerance, or the verdict's rule."""
        if self.tolerance is not None:
            return self.tolerance.describe()
        from layerport.verify.verdict import rule_words

        return rule_words(self.dtype)

    def inconclusive_words(self) -> str | None:
        """What the inconclusive cases say, or ``None`` when there are none."""
        cases = self.inconclusive
        if not cases:
            return None
        worst = max(cases, key=lambda c: c.precision_cost or 0.0)
        return (
            f"inconclusive at {len(cases)} of {len(self.comparisons)} comparisons: eager "
            f"{self.dtype} itself is {worst.precision_cost:.3g} from float64 on {worst.output} "
            f"at {worst.case}, half its significant digits or more: the layer is ill-conditioned "
            f"at that size in {self.dtype}, and the export's error {worst.max_abs_error:.3g} "
            "cannot be judged by it"
        )

    @property
    def failures(self) -> list[Comparison]:
        return [comparison for comparison in self.comparisons if not comparison.passed]

    def worst(self, comparisons: list[Comparison] | None = None) -> dict[str, dict[str, Any]]:
        """Per output: the largest absolute error over every case and where it occurred, and
        the largest relative error and the case it occurred in, which may be another.

        Over ``comparisons``, by default the judged ones (``costs`` for the cost)."""
        worst: dict[str, dict[str, Any]] = {}
        for comparison in self.comparisons if comparisons is None else comparisons:
            current = worst.setdefault(
                comparison.output, {"max_abs_error": -1.0, "max_rel_error": -1.0}
            )
            if comparison.max_abs_error > current["max_abs_error"]:
                current["max_abs_error"] = comparison.max_abs_error
                current["case"] = comparison.case
                current["index"] = list(comparison.worst_index)
            if comparison.max_rel_error > current["max_rel_error"]:
                current["max_rel_error"] = comparison.max_rel_error
                current["rel_case"] = comparison.case
        return worst

    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.comparisons), default=0.0)

    def max_rel_error(self) -> float:
        """The largest relative error of any output (``compare.relative_error``)."""
        return max((c.max_rel_error for c in self.comparisons), default=0.0)

    def summary(self) -> dict[str, Any]:
        """A compact, deterministic record for the file's metadata and for JSON output."""
        return {
            "passed": self.passed,
            "engines": list(self.engines),
            "cases": len({comparison.case for comparison in self.comparisons}),
            "grid": self.grid,
            "trials": self.trials,
            "streaming": self.streaming,
            **({"optional_left_out": self.left_out} if self.left_out else {}),
            **(
                {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol}
                if self.tolerance is not None
                else {"verdict": self.verdict_summary()}
            ),
            "max_abs_error": {name: _round(w["max_abs_error"]) for name, w in self.worst().items()},
            "max_rel_error": {name: _round(w["max_rel_error"]) for name, w in self.worst().items()},
            **({"quantization": self.quantization} if self.quantization else {}),
            **(
                {"second_opinion": self.second_opinion.summary()}
                if self.second_opinion is not None
                else {}
            ),
            **({"precision_cost": self.cost_summary()} if self.costs else {}),
            **({"runtimes": self.matrix_summary()} if self.runtimes or self.runtime_errors else {}),
        }

    def matrix_summary(self) -> dict[str, Any]:
        """Each runtime of the matrix: passed, worst error, or its error or why it was skipped."""
        summary: dict[str, Any] = {
            name: {
                "passed": report.passed,
                "max_abs_error": _round(report.max_abs_error()),
                "cases": len({comparison.case for comparison in report.comparisons}),
            }
            for name, report in self.runtimes.items()
        }
        for name, error in self.runtime_errors.items():
            summary[name] = {"passed": False, "error": error}
        for name, why in self.runtimes_skipped.items():
            summary[name] = {"passed": None, "skipped": why}
        return summary

    def verdict_summary(self) -> dict[str, Any]:
        """The float64 verdict's rule and what was inconclusive, for the record."""
        from layerport.verify.verdict import FACTOR, FLOAT64, FLOOR_ULPS

        return {
            "against": FLOAT64,
            "factor": FACTOR,
            "floor_ulps": FLOOR_ULPS,
            **({"inconclusive": self.inconclusive_words()} if self.inconclusive else {}),
        }

    def cost_summary(self) -> dict[str, Any]:
        """What the precision costs: per output, the largest errors against float64."""
        worst = self.worst(self.costs)
        return {
            "against": self.costs[0].engines[1],
            "max_abs_error": {name: _round(w["max_abs_error"]) for name, w in worst.items()},
            "max_rel_error": {name: _round(w["max_rel_error"]) for name, w in worst.items()},
        }

    def failure_message(self) -> str:
        """One line that says why verification failed, for the error contract.

        The notes come first: a changed plugin explains a failure better than a tolerance.
        """
        notes = "".join(f"{note}; " for note in self.notes)
        second = self.second_opinion
        if second is not None and not second.passed and not self.failures:
            ours = second.engines[0]
            worst = _worst(second.failures)
            return (
                f"{notes}the export passed in {self.engines[0]}, but fails in {ours} in "
                f"{len(second.failures)} of {len(second.comparisons)} comparisons "
                f"({second.rule()}); worst: {worst.describe()}; that points at "
                f"a bug in one of the runtimes, not in the export"
            )
        matrix = self.failed_runtimes()
        if matrix and not self.failures and not self.structure_problems:
            words = [
                f"{name} ({self.runtime_errors[name]})"
                if name in self.runtime_errors
                else f"{name} (worst: {_worst(self.runtimes[name].failures).describe()})"
                for name in matrix
            ]
            return (
                f"{notes}the export passed in {self.engines[0]}, but {len(matrix)} of "
                f"{len(self.runtimes) + len(self.runtime_errors)} runtimes disagree "
                f"({self.rule()}): {'; '.join(words)}"
            )
        if self.structure_problems:
            return f"{notes}verification failed: " + "; ".join(self.structure_problems)
        failures = self.failures
        worst = _worst(failures)
        return (
            f"{notes}verification failed in {len(failures)} of {len(self.comparisons)} "
            f"comparisons ({self.rule()}); worst: {worst.describe()}"
        )


def _worst(failures: list[Comparison]) -> Comparison:
    return max(failures, key=lambda c: (c.problem is not None, c.overshoot))


def format_dims(dims: Mapping[str, int]) -> str:
    """``batch=8 seq=32``, or ``fixed shape`` for a layer without dynamic dims."""
    return " ".join(f"{name}={size}" for name, size in dims.items()) or "fixed shape"


def _round(value: float) -> float:
    # Three significant digits keep the metadata byte-for-byte stable across runs.
    return float(f"{value:.3g}")


def note_plugin_version(
    report: VerificationReport, config: LayerConfig, record: ExportRecord, what: str
) -> None:
    """Say first when the installed plugin is not the one that made the export."""
    installed = config.layer.plugin.version
    if record.plugin_version != installed:
        report.notes.append(
            f"the {what} was exported by {record.plugin} {record.plugin_version} and "
            f"{installed} is installed, so the layer's code may have changed"
        )


def note_underflow(report: VerificationReport, config: LayerConfig) -> None:
    """Name the weights the conversion flushed as the likely cause of a failure."""
    if report.passed or not config.underflow:
        return
    tensors = "; ".join(config.underflow)
    report.notes.insert(
        0,
        f"converting the weights to {config.dtype} made non-zero values zero or subnormal "
        f"({tensors}), the likely cause",
    )

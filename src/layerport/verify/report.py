"""What a verification found, as data: the CLI renders it, the file's metadata records it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from layerport.dtypes import Tolerance
from layerport.verify.compare import Comparison


@dataclass
class VerificationReport:
    """Everything a verification checked, and how close each output came.

    ``engines`` is (actual, expected): the engine under test and the one trusted.
    """

    layer: str
    dtype: str
    tolerance: Tolerance
    export_dims: dict[str, int]
    grid: dict[str, list[int]]
    trials: int
    engines: tuple[str, str] = ("onnxruntime", "eager")
    structure_problems: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    streaming: str | None = None
    notes: list[str] = field(default_factory=list)  # what may explain a failure, said first
    # A narrower precision's cost: the file against the layer in float64; never judged.
    costs: list[Comparison] = field(default_factory=list)
    quantization: str | None = None  # the recipe of a quantized file (int8), if any
    # Optional inputs the first draw at every size leaves out, so their zero default is checked.
    left_out: list[str] = field(default_factory=list)
    # The same file in a second runtime (onnx-reference) against the first, if asked for.
    second_opinion: VerificationReport | None = None

    @property
    def passed(self) -> bool:
        return (
            not self.structure_problems
            and all(c.passed for c in self.comparisons)
            and (self.second_opinion is None or self.second_opinion.passed)
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
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "max_abs_error": {name: _round(w["max_abs_error"]) for name, w in self.worst().items()},
            "max_rel_error": {name: _round(w["max_rel_error"]) for name, w in self.worst().items()},
            **({"quantization": self.quantization} if self.quantization else {}),
            **(
                {"second_opinion": self.second_opinion.summary()}
                if self.second_opinion is not None
                else {}
            ),
            **({"precision_cost": self.cost_summary()} if self.costs else {}),
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
            ours, theirs = second.engines
            worst = max(second.failures, key=lambda c: (c.problem is not None, c.needed_atol))
            return (
                f"{notes}the export passed against eager, but {ours} and {theirs} disagree on "
                f"it in {len(second.failures)} of {len(second.comparisons)} comparisons "
                f"({second.tolerance.describe()}); worst: {worst.describe()}; that points at "
                f"a bug in one of the runtimes, not in the export"
            )
        if self.structure_problems:
            return f"{notes}verification failed: " + "; ".join(self.structure_problems)
        failures = self.failures
        worst = max(failures, key=lambda c: (c.problem is not None, c.needed_atol))
        return (
            f"{notes}verification failed in {len(failures)} of {len(self.comparisons)} "
            f"comparisons ({self.tolerance.describe()}); worst: {worst.describe()}"
        )


def format_dims(dims: Mapping[str, int]) -> str:
    """``batch=8 seq=32``, or ``fixed shape`` for a layer without dynamic dims."""
    return " ".join(f"{name}={size}" for name, size in dims.items()) or "fixed shape"


def _round(value: float) -> float:
    # Three significant digits keep the metadata byte-for-byte stable across runs.
    return float(f"{value:.3g}")

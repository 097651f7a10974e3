"""Proving that an exported file computes what eager PyTorch computes, at every size.

Checking an export only at the shape it was traced at lets wrong files through:
a dim the exporter silently pinned, or an RNN unrolled to the example's length,
agrees perfectly at that one shape. So verification:

- checks the file's structure against the spec: input and output names, dtypes,
  and that every declared-dynamic dim is symbolic in the file, not pinned;
- runs onnxruntime and eager PyTorch on the same inputs over a grid of sizes: for
  each dynamic dim 1, the traced size and a larger size that is not a multiple of
  it, in every combination, with several random draws (the first draw leaves
  optional inputs out, so their zero default is checked too);
- for layers that declare streaming, runs a long sequence through onnxruntime in
  uneven chunks, carrying state from chunk to chunk, and compares it with one
  eager pass over the whole sequence.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from layerport.compare import Comparison, compare_arrays
from layerport.config import LayerConfig, check_memory
from layerport.defaults import DEFAULT_TRIALS
from layerport.eager import random_inputs
from layerport.spec import Tolerance

if TYPE_CHECKING:
    from torch import nn

    from layerport.runtime import Model


@dataclass
class VerificationReport:
    """Everything a verification checked, and how close each output came."""

    layer: str
    dtype: str
    tolerance: Tolerance
    export_dims: dict[str, int]
    grid: dict[str, list[int]]
    trials: int
    structure_problems: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    streaming: str | None = None

    @property
    def passed(self) -> bool:
        return not self.structure_problems and all(c.passed for c in self.comparisons)

    @property
    def failures(self) -> list[Comparison]:
        return [comparison for comparison in self.comparisons if not comparison.passed]

    def worst(self) -> dict[str, dict[str, Any]]:
        """Per output: the largest absolute error over every case, where it occurred, and
        the largest relative error (which may occur elsewhere)."""
        worst: dict[str, dict[str, Any]] = {}
        for comparison in self.comparisons:
            current = worst.setdefault(
                comparison.output, {"max_abs_error": -1.0, "max_rel_error": 0.0}
            )
            if comparison.max_abs_error > current["max_abs_error"]:
                current["max_abs_error"] = comparison.max_abs_error
                current["case"] = comparison.case
                current["index"] = list(comparison.worst_index)
            current["max_rel_error"] = max(current["max_rel_error"], comparison.max_rel_error)
        return worst

    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.comparisons), default=0.0)

    def summary(self) -> dict[str, Any]:
        """A compact, deterministic record for the file's metadata and for ``--json``."""
        return {
            "passed": self.passed,
            "cases": len({comparison.case for comparison in self.comparisons}),
            "grid": self.grid,
            "trials": self.trials,
            "streaming": self.streaming,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "max_abs_error": {name: _round(w["max_abs_error"]) for name, w in self.worst().items()},
        }

    def failure_message(self) -> str:
        """One line that says why verification failed, for the error contract."""
        if self.structure_problems:
            return "verification failed: " + "; ".join(self.structure_problems)
        failures = self.failures
        worst = max(failures, key=lambda c: (c.problem is not None, c.needed_atol))
        return (
            f"verification failed in {len(failures)} of {len(self.comparisons)} comparisons "
            f"(atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g}); worst: {worst.describe()}"
        )

    def to_markdown(self) -> str:
        """A report a person can read, or attach to a bug report."""
        lines = [
            f"# Verification of {self.layer} ({self.dtype})",
            "",
            f"- result: **{'passed' if self.passed else 'FAILED'}**",
            f"- tolerance: atol {self.tolerance.atol:g}, rtol {self.tolerance.rtol:g} "
            "(pass when |onnxruntime - eager| <= atol + rtol * |eager|)",
            f"- traced at: {_format_dims(self.export_dims)}",
            f"- grid: {', '.join(f'{name} in {sizes}' for name, sizes in self.grid.items()) or 'none'},"
            f" {self.trials} random draws each",
            f"- streaming: {self.streaming or 'not applicable'}",
            "",
        ]
        if self.structure_problems:
            lines += (
                ["## Structure problems", ""] + [f"- {p}" for p in self.structure_problems] + [""]
            )
        lines += [
            "## Worst error per output",
            "",
            "| output | max abs error | max rel error | case | worst element |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, worst in self.worst().items():
            lines.append(
                f"| {name} | {worst['max_abs_error']:.3g} | {worst['max_rel_error']:.3g} "
                f"| {worst['case']} | {worst['index']} |"
            )
        lines += [
            "",
            "## Every comparison",
            "",
            "| case | output | result | max abs | max rel | needed atol | needed rtol |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in self.comparisons:
            result = "pass" if c.passed else f"FAIL{': ' + c.problem if c.problem else ''}"
            lines.append(
                f"| {c.case} | {c.output} | {result} | {c.max_abs_error:.3g} | {c.max_rel_error:.3g} "
                f"| {c.needed_atol:.3g} | {c.needed_rtol:.3g} |"
            )
        return "\n".join(lines) + "\n"


def verify_export(
    config: LayerConfig,
    module: nn.Module,
    model: Model,
    export_dims: Mapping[str, int],
    *,
    tolerance: Tolerance | None = None,
    trials: int = DEFAULT_TRIALS,
) -> VerificationReport:
    """Compare ``model`` in onnxruntime with ``module`` in eager PyTorch."""
    spec = config.spec
    grid = {dim.name: list(dim.grid(export_dims[dim.name])) for dim in spec.dims}
    report = VerificationReport(
        layer=config.layer.qualified_name,
        dtype=config.dtype,
        tolerance=tolerance or spec.tolerance(config.dtype),
        export_dims=dict(export_dims),
        grid=grid,
        trials=trials,
        structure_problems=structure_problems(config, model),
    )
    if report.structure_problems:
        return report
    points = [dict(zip(grid, sizes, strict=True)) for sizes in itertools.product(*grid.values())]
    for dims in points:
        check_memory(config, dims)
    draw = 0
    for dims in points:
        at_dims = config.with_dims(dims)
        for trial in range(trials):
            draw += 1
            inputs = random_inputs(at_dims, config.seed + 7919 * draw, include_optional=trial > 0)
            case = f"{_format_dims(dims)} draw {trial}"
            _compare_outputs(report, case, _run_eager(module, at_dims, inputs), model.run(inputs))
    if spec.streaming is not None:
        _verify_streaming(report, config, module, model, export_dims)
    return report


def structure_problems(config: LayerConfig, model: Model) -> list[str]:
    """Names, dtypes and dims of the file against the spec; pinned dynamic dims above all."""
    spec = config.spec
    problems = []
    for kind, declared, actual in (
        ("inputs", spec.inputs, model.inputs),
        ("outputs", spec.outputs, model.outputs),
    ):
        declared_names = [tensor.name for tensor in declared]
        actual_names = [array.name for array in actual]
        if declared_names != actual_names:
            problems.append(
                f"the file's {kind} are {actual_names}, the layer declares {declared_names}"
            )
            continue
        for tensor, array in zip(declared, actual, strict=True):
            if array.dtype != config.dtype:
                problems.append(
                    f"{tensor.name} is {array.dtype} in the file, expected {config.dtype}"
                )
            if len(array.dims) != len(tensor.dims):
                problems.append(
                    f"{tensor.name} has {len(array.dims)} dims in the file, expected {len(tensor.dims)}"
                )
                continue
            dynamic = spec.dynamic_axes(tensor)
            for axis, (dim, size) in enumerate(zip(array.dims, config.shape(tensor), strict=True)):
                if axis in dynamic and isinstance(dim, int):
                    problems.append(
                        f"declared-dynamic dim {dynamic[axis]} of {tensor.name} is pinned to {dim} in the file"
                    )
                elif axis not in dynamic and dim != size:
                    problems.append(
                        f"{tensor.name} axis {axis} is {dim} in the file, expected {size}"
                    )
    return problems


def _verify_streaming(
    report: VerificationReport,
    config: LayerConfig,
    module: nn.Module,
    model: Model,
    export_dims: Mapping[str, int],
) -> None:
    """A long sequence in uneven chunks through onnxruntime, against one eager pass."""
    streaming = config.spec.streaming
    assert streaming is not None
    length = report.grid[streaming.dim][-1]
    first = export_dims[streaming.dim]
    chunks = [1, first, length - 1 - first] if length > first + 1 else [1, length - 1]
    dims = {**export_dims, streaming.dim: length}
    whole = config.with_dims(dims)
    inputs = random_inputs(whole, config.seed + 104729, include_optional=True)
    expected = _run_eager(module, whole, inputs)
    carried = dict(inputs)
    pieces: dict[str, list[np.ndarray]] = {}
    start = 0
    for size in chunks:
        chunk = {
            name: _slice(array, _axis_of(config, name, streaming.dim, inputs=True), start, size)
            for name, array in carried.items()
        }
        outputs = model.run(chunk)
        for name, array in outputs.items():
            pieces.setdefault(name, []).append(array)
        for input_name, output_name in streaming.carry:
            carried[input_name] = outputs[output_name]
        start += size
    report.streaming = f"{streaming.dim}={length} in chunks {'+'.join(map(str, chunks))}"
    case = f"streaming {report.streaming}"
    actual = {}
    for tensor in config.spec.outputs:
        axis = _axis_of(config, tensor.name, streaming.dim, inputs=False)
        parts = pieces[tensor.name]
        actual[tensor.name] = parts[-1] if axis is None else np.concatenate(parts, axis=axis)
    _compare_outputs(report, case, expected, actual)


def _axis_of(config: LayerConfig, name: str, dim: str, *, inputs: bool) -> int | None:
    tensors = config.spec.inputs if inputs else config.spec.outputs
    tensor = next(tensor for tensor in tensors if tensor.name == name)
    return tensor.dims.index(dim) if dim in tensor.dims else None


def _slice(array: np.ndarray, axis: int | None, start: int, size: int) -> np.ndarray:
    if axis is None:
        return array
    index: list[slice] = [slice(None)] * array.ndim
    index[axis] = slice(start, start + size)
    return np.ascontiguousarray(array[tuple(index)])


def _run_eager(
    module: nn.Module, config: LayerConfig, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    from layerport.build import run_module

    return run_module(module, config, inputs)


def _compare_outputs(
    report: VerificationReport,
    case: str,
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
) -> None:
    for name, reference in expected.items():
        report.comparisons.append(
            compare_arrays(name, case, actual[name], reference, report.tolerance)
        )


def _format_dims(dims: Mapping[str, int]) -> str:
    return " ".join(f"{name}={size}" for name, size in dims.items()) or "fixed shape"


def _round(value: float) -> float:
    # Three significant digits keep the metadata byte-for-byte stable across runs.
    return float(f"{value:.3g}")

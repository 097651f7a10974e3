"""The verdict on a float export: its error against float64, judged by what its precision costs.

A float32 file cannot be closer to the exact function than float32 arithmetic
allows, and a fixed atol/rtol does not know how close that is: eager PyTorch
itself, in float32, is 1e-3 away from float64 on a trained GRU at seq 301. A
fixed tolerance then blames float32 rounding on the export. So the layer also
runs in float64, from the same source weights, on the same inputs, and for
each output at each case:

- the *export error* is max |file - float64 eager|;
- the *precision cost* is max |eager in the file's precision - float64 eager|;
- the file passes when ``export error <= FACTOR * precision cost + floor``, where
  ``floor = FLOOR_ULPS * epsilon * max |float64 eager|``: a few units in the last
  place of the output's scale, so that a case where eager happens to round
  (almost) exactly does not demand the impossible of the file.

Where eager in the file's precision is itself far from float64 (an
ill-conditioned layer at that size), the case is *inconclusive*: it neither
fails nor clears the file, and the report says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from layerport.dtypes import Tolerance, precision
from layerport.verify.compare import EXACT, Comparison, compare_arrays, is_float

if TYPE_CHECKING:
    import onnx

    from layerport.config import LayerConfig

# Both the file and eager round the same function in the same precision, in a
# different order (fused kernels, Scan against a Python loop), so the file's
# error against float64 is of the order of eager's own. Measured with trained
# weights (tests/data) at seq 301, trials 1: the GRU's export error was at most
# 1.88x its precision cost in float32 and 1.86x in float16; the LSTM's, 5.43x
# in float32, but only at a case where the cost was tiny, and within 1.97x the
# floor there. 4 fails a weight changed enough to move the output 10x.
FACTOR = 4.0
# When eager rounds (almost) exactly the cost is near 0, and the file's own
# roundings would fail; 8 ulps of the output's largest value covered the
# LSTM's worst such case (export error / floor at most 1.97).
FLOOR_ULPS = 8.0
FLOAT64 = "float64 eager"


def judged_tolerance(
    config: LayerConfig,
    atol: float | None = None,
    rtol: float | None = None,
    quantize: str | None = None,
) -> Tolerance | None:
    """The fixed tolerance verification judges ``config``'s file by, or ``None`` for the verdict.

    The verdict judges float32, float16 and bfloat16 files; a given ``atol`` or
    ``rtol``, a tolerance the layer declares for the dtype
    (``LayerSpec.tolerances``), a float64 file and a quantized one are judged
    element by element instead (``LayerConfig.tolerance``).
    """
    explicit = atol is not None or rtol is not None or config.dtype in config.spec.tolerances
    if quantize is None and not explicit and applies(config.dtype):
        return None
    return config.tolerance(atol, rtol, quantize)


def applies(dtype: str) -> bool:
    """Whether files of ``dtype`` are judged by the verdict: float files narrower than float64.

    A float64 file has nothing wider to be measured against, so it keeps the
    fixed tolerance.
    """
    return dtype != "float64" and dtype in {"float32", "float16", "bfloat16"}


def ill_conditioned(cost: float, scale: float, dtype: str) -> bool:
    """Whether eager in ``dtype`` lost half its significant digits or more against float64.

    ``cost`` is its max |error|, ``scale`` the output's max |float64 value|; at
    sqrt(epsilon) relative (3.5e-4 for float32, 0.031 for float16) the precision
    itself no longer computes the function, and no export can be judged by it.
    """
    if not math.isfinite(cost):
        return True
    return cost > math.sqrt(precision(dtype).epsilon) * scale


def judge_outputs(
    case: str,
    exact: Mapping[str, np.ndarray],
    own: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    dtype: str,
    engines: tuple[str, str],
    scales: Mapping[str, float] | None = None,
) -> tuple[list[Comparison], list[Comparison]]:
    """Judge every output of one case; returns (the judged comparisons, the precision costs).

    ``exact`` is float64 eager's outputs, ``own`` eager's in ``dtype``, ``actual``
    the engine's under test; ``engines`` names (actual, eager). ``scales`` gives
    outputs a least scale for the floor (``bounded_output_scales``).
    """
    scales = scales or {}
    judged, costs = [], []
    for name, reference in exact.items():
        cost = compare_arrays(
            name, case, _wide(own[name]), reference, Tolerance(math.inf, 0.0), (engines[1], FLOAT64)
        )
        costs.append(cost)
        if actual[name].dtype != own[name].dtype or not is_float(own[name]):
            # The dtype problem in compare's words, or ids and masks, which match exactly.
            judged.append(compare_arrays(name, case, actual[name], own[name], EXACT, engines))
        else:
            judged.append(
                judge_array(
                    name,
                    case,
                    actual[name],
                    reference,
                    cost,
                    dtype,
                    engines[0],
                    scales.get(name, 0.0),
                )
            )
    return judged, costs


def judge_array(
    output: str,
    case: str,
    actual: np.ndarray,
    exact: np.ndarray,
    cost: Comparison,
    dtype: str,
    engine: str,
    least_scale: float = 0.0,
) -> Comparison:
    """One output: ``actual`` against float64 ``exact``, allowed ``FACTOR`` x ``cost`` + the floor.

    The floor's scale is the output's largest value, or ``least_scale`` if larger.
    """
    scale = max(float(np.abs(exact).max()) if exact.size else 0.0, least_scale)
    price = math.inf if cost.problem else cost.max_abs_error
    allowed = FACTOR * price + FLOOR_ULPS * precision(dtype).epsilon * scale
    comparison = compare_arrays(
        output,
        case,
        _wide(actual),
        exact,
        Tolerance(allowed, 0.0),
        (engine, FLOAT64),
    )
    comparison = dataclasses.replace(comparison, precision_cost=price, allowed=allowed)
    if comparison.problem is None and ill_conditioned(price, scale, dtype):
        # Neither blamed nor cleared: the report lists it as inconclusive.
        return dataclasses.replace(comparison, passed=True, inconclusive=True)
    return comparison


# Ops whose result lies within [-1, 1] whatever their input, and whose runtime
# kernels are accurate to ulps of 1, not of the value: onnxruntime's Sigmoid is
# within 1.2e-7 of float64 over [-20, 20] (1 ulp of 1.0), yet 0.09% off at
# x = -11.4, where the value is 1.2e-5 and float32 eager is exact. A confident
# classifier's probabilities are such values; their floor is measured at 1.
BOUNDED_OPS = frozenset({"Sigmoid", "Tanh", "Softmax", "HardSigmoid"})
# Ops that move or reshape values without computing new ones.
_PASS_THROUGH = frozenset(
    {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Concat"}
)


def bounded_output_scales(model: onnx.ModelProto) -> dict[str, float]:
    """1.0 for each graph output computed by a bounded op (``BOUNDED_OPS``), through any
    reshaping; other outputs are judged at their own scale."""
    producers = {name: node for node in model.graph.node for name in node.output}
    scales = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = producers.get(node.input[0])
        if node is not None and node.op_type in BOUNDED_OPS:
            scales[output.name] = 1.0
    return scales


def rule_words(dtype: str) -> str:
    """The rule in words, as reports and messages give it."""
    return (
        f"export error against float64 within {FACTOR:g} x eager {dtype}'s own "
        f"+ {FLOOR_ULPS:g} ulps of the output's scale"
    )


def _wide(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float64)

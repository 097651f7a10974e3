"""int8 judged like int8: the file against a numpy run of the same quantization.

An int8 file differs from the float32 layer by what int8 costs (1% of the
output's range, more or less), and element by element no tolerance separates
that cost from an export error: an output near zero is 200% off either way. So
an int8 file is verified against a run of the *same quantization* of the layer:

- the file's graph, with every quantized weight replaced by the layer's own float
  weight quantized again with the scale and zero point the file holds, and every
  float weight (a bias) by the layer's own;
- run by onnx's reference evaluator: ``DynamicQuantizeLinear`` for the
  activations, exact int32 ``MatMulInteger``, float32 for the rest.

The file must match it within a small part of the output's range (the ``int8``
tolerance). A weight changed in the file, or arithmetic that saturates on the
CPU running the check, fails; what int8 costs against float64 is reported
beside, as ``costs``. When the file fails, ``saturation_note`` tells whether
onnxruntime matched the saturating arithmetic of AVX2 without VNNI
(``runtime.int8``) better than the exact one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference.op_run import OpRun

from layerport.errors import BadFile
from layerport.runtime.int8 import integer_matmul
from layerport.runtime.modelfile import iter_graphs
from layerport.runtime.session import Session, SessionSettings

QUANTIZED_SUFFIX = "_quantized"


class SaturatingMatMulInteger(OpRun):
    """``MatMulInteger`` as AVX2 without VNNI computes it (``runtime.int8.integer_matmul``)."""

    op_domain = ""

    def _run(
        self,
        a: np.ndarray,
        b: np.ndarray,
        a_zero_point: np.ndarray | None = None,
        b_zero_point: np.ndarray | None = None,
    ) -> tuple[np.ndarray]:
        a_zero = 0 if a_zero_point is None else int(a_zero_point)
        b_zero = 0 if b_zero_point is None else b_zero_point
        return (integer_matmul(a, a_zero, b, b_zero, saturating=True),)


SaturatingMatMulInteger.__name__ = "MatMulInteger"  # the evaluator finds ops by class name


def requantized(quantized: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """``quantized`` with its weights taken from ``source``, the float32 model it came from.

    Each ``W_quantized`` initializer becomes ``source``'s ``W`` quantized with the
    file's ``W_scale`` and ``W_zero_point`` (per tensor, or per output column);
    each float initializer that ``source`` also holds takes ``source``'s value.
    Raises ``BadFile`` for a quantized weight without a float one in ``source``.
    """
    weights = {tensor.name: tensor for tensor in source.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    for graph in iter_graphs(model.graph):
        own = {tensor.name: tensor for tensor in graph.initializer}
        for index, tensor in enumerate(graph.initializer):
            if tensor.name.endswith(QUANTIZED_SUFFIX):
                base = tensor.name[: -len(QUANTIZED_SUFFIX)]
                if base not in weights or f"{base}_scale" not in own:
                    raise BadFile(
                        f"{tensor.name} has no float weight {base} in the layer's float32 "
                        "export, so its quantization cannot be checked against the layer"
                    )
                stored = numpy_helper.to_array(tensor)
                scale = numpy_helper.to_array(own[f"{base}_scale"])
                zero_point = numpy_helper.to_array(own[f"{base}_zero_point"])
                value = quantize_weight(numpy_helper.to_array(weights[base]), scale, zero_point)
                replacement = numpy_helper.from_array(value.astype(stored.dtype), tensor.name)
            elif tensor.name in weights and tensor.data_type == weights[tensor.name].data_type:
                replacement = weights[tensor.name]
            else:
                continue
            graph.initializer[index].CopyFrom(replacement)
    return model


def quantize_weight(weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``round(w / scale) + zero_point``, half to even, clipped to int8 or uint8 as stored.

    ``scale`` and ``zero_point`` are scalars, or one per column of a (K, N) weight.
    """
    info = np.iinfo(zero_point.dtype)
    values = np.rint(weight.astype(np.float32) / scale.astype(np.float32))
    return np.clip(values + zero_point.astype(np.float32), info.min, info.max)


class SameQuantizationEngine:
    """A quantized file's own graph, on the layer's weights, in numpy (see the module).

    ``smallest`` are the dims whose smallest size is not 1 (an empty KV cache: 0), as
    ``Session`` takes them; ``saturating`` computes ``MatMulInteger`` as AVX2 without
    VNNI does.
    """

    def __init__(
        self,
        quantized: onnx.ModelProto,
        source: onnx.ModelProto,
        name: str,
        *,
        optional_inputs: Collection[str] = (),
        smallest: Mapping[str, int] | None = None,
        saturating: bool = False,
    ) -> None:
        from onnx.reference import ReferenceEvaluator

        model = requantized(quantized, source)
        self.name = "int8 reference, saturating" if saturating else "int8 reference"
        self.session = Session(
            model,
            name,
            SessionSettings(runtime="onnx-reference"),
            optional_inputs=optional_inputs,
            smallest=smallest,
        )
        self._saturating = (
            ReferenceEvaluator(model, new_ops=[SaturatingMatMulInteger]) if saturating else None
        )

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._saturating is None:
            return self.session.run(inputs)
        complete, _ = self.session.check_inputs(inputs)
        results = self._saturating.run(None, complete)
        return {
            spec.name: np.asarray(result)
            for spec, result in zip(self.session.outputs, results, strict=True)
        }

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        return lambda: self.run(inputs)


def saturation_note(
    file_outputs: Mapping[str, np.ndarray],
    exact: Mapping[str, np.ndarray],
    saturating: Mapping[str, np.ndarray],
) -> str | None:
    """The failure's cause when onnxruntime matched saturating arithmetic, else ``None``.

    All three ran on the same inputs: the file in onnxruntime, ``exact`` and
    ``saturating`` the ``SameQuantizationEngine`` without and with saturation.
    """
    exact_error = max(_largest_difference(file_outputs[n], exact[n]) for n in exact)
    saturated_error = max(_largest_difference(file_outputs[n], saturating[n]) for n in exact)
    if saturated_error >= exact_error:
        return None
    return (
        "onnxruntime's int8 arithmetic saturates on this CPU: its output matches pairs of "
        "uint8 x int8 products summed into 16 bits (AVX2 without VNNI), "
        f"max abs difference {saturated_error:.3g}, not the exact int8 result "
        f"({exact_error:.3g}); this CPU lacks VNNI, and the file's weights use all 8 bits; "
        "export it again with the default int8 recipe (7-bit weights), which cannot "
        "saturate on any CPU"
    )


def _largest_difference(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.float64) - second.astype(np.float64)).max(initial=0.0))

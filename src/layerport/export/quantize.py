"""int8 dynamic quantization of a float32 export, by onnxruntime's own quantizer.

int8 is a recipe applied to a float32 file, not a dtype: inputs and outputs stay
float32, and onnxruntime quantizes each activation at run time
(``DynamicQuantizeLinear``) against weights stored as signed int8 with a scale
per tensor. The quantizer is ``onnxruntime.quantization.quantize_dynamic``;
layerport only prepares the graph for it and records what it did.

The choices, from measurements on onnxruntime 1.32's CPU provider:

- 7-bit signed weights (``QInt8`` with ``reduce_range``, in [-64, 64]): onnxruntime
  pairs them with uint8 activations, and on x86 CPUs without VNNI it sums each
  pair of products into a saturating int16. 8-bit weights reach 255 x 127 x 2 =
  64770 there and clip (the 512 x 512 linear came out 17.9% of its range off,
  where the exact int8 result is 0.9%); 7-bit ones reach 32640 <= 32767 and never
  clip (``runtime.int8`` proves the bound). They cost 1.1% to 1.3% of the range
  on the linears, at the speed of 8-bit weights. uint8 weights cannot saturate
  either but ran 1.15x slower than float32; per-channel scales ran 1.6x slower
  than per-tensor ones and were no more accurate on these layers;
- a recurrence's ``Scan`` body stays float32: quantizing it was slower than
  leaving it (the quantizer's default, ``EnableSubgraph=False``);
- a weight smaller than ``MIN_QUANTIZED_WEIGHTS`` elements stays float32:
  quantizing the activation at every call costs more than int8 saves there.
  The default rnn (weights 64 x 128 and 16 x 64) ran 1.34x slower than float32
  at batch 64, seq 256 with both quantized; the 4096 x 4096 linear ran 3.2x faster.
- a file where nothing would be quantized is refused: it would be a float32 file
  under an int8 name. That is the case of ``lstm`` and ``gru``: only ``MatMul``
  weights are quantized. onnxruntime's ``DynamicQuantizeLSTM`` would run an
  LSTM in int8 (once its weights, which torch.onnx computes with ``Slice`` and
  ``Concat`` to reorder the gates, are folded into constants; measured on
  input and hidden 256 at batch 37, seq 64 without VNNI: 2.2% of the range off
  with 7-bit weights, 46% with 8-bit ones), but verification has no numpy model
  of that operator to hold it to, so it is left for later.

The dynamic quantizer handles ``MatMul`` but not ``Gemm`` (its
``IntegerOpsRegistry``), and torch.onnx exports ``nn.Linear`` as ``Gemm``; so a
``Gemm`` with a constant weight is first written as the ``MatMul`` and ``Add``
it computes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from layerport.config import LayerConfig
from layerport.dtypes import QUANTIZATIONS
from layerport.errors import ExportFailed, Setting, UserInputError, one_line
from layerport.runtime import noise
from layerport.runtime.int8 import INT16_MAX, int8_weights_worst_pair_sum, quantized_weight_bytes
from layerport.runtime.modelfile import iter_graphs

# 256 x 256: below it, a MatMul's dynamic quantization costs more than it saves.
MIN_QUANTIZED_WEIGHTS = 65536
# The ops given to the quantizer. Not Conv: onnxruntime 1.32's CPU ConvInteger
# takes unsigned weights only, and signed ones are the fast MatMul path.
QUANTIZED_OPS = ("MatMul",)
# 7-bit weights: a pair of uint8 x int8 products fits int16 on every x86 CPU.
WEIGHT_BITS = 7


def check_quantizable(config: LayerConfig, quantize: str | None) -> None:
    """Raise ``UserInputError`` unless ``quantize`` is ``None`` or a recipe for this float32 layer."""
    if quantize is None:
        return
    if quantize not in QUANTIZATIONS:
        raise UserInputError(
            f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}"
        )
    if config.dtype != "float32":
        raise UserInputError(
            f"{quantize} quantizes a float32 export (its inputs and outputs stay float32), "
            f"not a {config.dtype} one; drop the dtype, or convert the weights with ",
            Setting("dtype", "float32"),
        )


def quantize_int8(
    model: onnx.ModelProto, layer: str = "the layer"
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``model`` with its weights' ``MatMul``s quantized to int8, and the recipe.

    The recipe is what the file's metadata records: the library, the mode, the
    weight type and bits, which ops became int8 (``{"MatMulInteger": 2}``), the
    bytes of weights quantized and the largest sum a pair of weights reaches in
    16-bit arithmetic (``runtime.int8.worst_pair_sum``). Raises ``UserInputError``
    when no weight of ``layer`` would be quantized, ``ExportFailed`` when
    onnxruntime's quantizer fails.
    """
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = gemm_as_matmul(model)
    small = _small_weight_nodes(prepared.graph)
    with tempfile.TemporaryDirectory(prefix="layerport-quantize-") as folder:
        output = Path(folder) / "int8.onnx"
        try:
            with noise.captured_chatter():
                quantize_dynamic(
                    prepared,
                    output,
                    op_types_to_quantize=list(QUANTIZED_OPS),
                    weight_type=QuantType.QInt8,
                    reduce_range=True,  # WEIGHT_BITS
                    nodes_to_exclude=small,
                )
        except Exception as error:
            raise ExportFailed(f"onnxruntime's quantizer failed: {one_line(error)}") from error
        quantized = onnx.load_model(output)
    ops = _quantized_ops(quantized.graph)
    if not ops:
        raise UserInputError(
            f"int8 would quantize nothing in {layer}: onnxruntime's quantizer takes the "
            f"constant weights of MatMul nodes with {MIN_QUANTIZED_WEIGHTS} elements "
            f"or more, and {layer} has none ({len(small)} below that size), so the file would "
            "compute in float32; export it without quantization"
        )
    for graph in iter_graphs(quantized.graph):
        # The quantizer's shape inference ran at the traced sizes (see clean_model).
        del graph.value_info[:]
    recipe = {
        "quantize": "int8",
        "library": f"onnxruntime.quantization {onnxruntime.__version__}",
        "mode": "dynamic",
        "weight_type": "QInt8",
        "weight_bits": WEIGHT_BITS,
        "per_channel": False,
        "ops": ops,
        "subgraphs": "float32",
        "min_weights": MIN_QUANTIZED_WEIGHTS,
        "float32_nodes": len(small),
        "quantized_bytes": quantized_weight_bytes(quantized),
        "worst_pair_sum": int8_weights_worst_pair_sum(quantized),
        "int16_max": INT16_MAX,
    }
    return quantized, recipe


def _small_weight_nodes(graph: onnx.GraphProto) -> list[str]:
    """The names of the ``MatMul`` nodes whose weights are too small to gain."""
    sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type in QUANTIZED_OPS
        and len(node.input) > 1
        and node.input[1] in sizes
        and sizes[node.input[1]] < MIN_QUANTIZED_WEIGHTS
    ]


def _quantized_ops(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _reads(graph: onnx.GraphProto) -> set[str]:
    """Every value a node of ``graph`` or of its subgraphs reads, and its outputs."""
    names = {value.name for value in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                names |= _reads(attribute.g)
    return names


def gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` where each ``Gemm`` of a constant weight is ``MatMul`` then ``Add``.

    Only the plain form torch.onnx writes for ``nn.Linear`` (``alpha = beta = 1``,
    ``transA = 0``) is rewritten; any other ``Gemm`` stays, unquantized.
    """
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and node.input[1] in initializers
            and attributes.get("alpha", 1.0) == 1.0
            and attributes.get("beta", 1.0) == 1.0
            and not attributes.get("transA", 0)
        )
        if not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attributes.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        weight_name = f"{node.input[1]}_for_matmul"
        graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], weight_name], [product], name=f"{node.name}_matmul"
            )
        )
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_add"
                )
            )
    del graph.node[:]
    graph.node.extend(nodes)
    used = _reads(graph)
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten

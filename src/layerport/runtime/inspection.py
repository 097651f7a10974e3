"""Describing any ONNX file: opset, inputs and outputs, op counts, size, layerport metadata.

Torch-free, and it works on files layerport did not export.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from layerport.dtypes import element_bits, element_type_name
from layerport.runtime.arrays import ArraySpec
from layerport.runtime.external import proto_of
from layerport.runtime.int8 import INT16_MAX, int8_weights_worst_pair_sum, quantized_weight_bytes
from layerport.runtime.interface import array_spec_of
from layerport.runtime.metadata import ExportRecord
from layerport.runtime.modelfile import iter_graphs, read_model


@dataclass(frozen=True)
class ModelDescription:
    """What ``layerport inspect`` shows about one ONNX file.

    ``inputs`` and ``outputs`` give each tensor's name, dims (a symbolic name or
    a size) and dtype; ``record`` is the layerport metadata, ``None`` for a file
    layerport did not export; ``metadata`` holds every other ``metadata_props`` key.
    """

    path: Path
    size: int  # bytes on disk
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[ArraySpec]
    outputs: list[ArraySpec]
    ops: dict[str, int]  # op type -> count, subgraphs included
    initializers: int
    weight_bytes: int  # bytes of every initializer's data
    record: ExportRecord | None
    metadata: dict[str, str]
    # element type -> (initializers, bytes), subgraphs included: an int8 file's int8 weights
    initializer_types: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    # An int8 file's recipe, as recorded, with the bytes quantized and the largest
    # weight-pair sum measured on the file itself (``runtime.int8``).
    quantization: dict[str, Any] | None = None

    @property
    def nodes(self) -> int:
        return sum(self.ops.values())

    def to_dict(self) -> dict[str, Any]:
        """The stable ``inspect --json`` schema."""
        return {
            "path": str(self.path),
            "size": self.size,
            "ir_version": self.ir_version,
            "opsets": dict(self.opsets),
            "producer": self.producer,
            "inputs": [_value_dict(spec) for spec in self.inputs],
            "outputs": [_value_dict(spec) for spec in self.outputs],
            "nodes": self.nodes,
            "ops": dict(self.ops),
            "initializers": self.initializers,
            "weight_bytes": self.weight_bytes,
            "initializer_types": {
                dtype: {"count": count, "bytes": size}
                for dtype, (count, size) in self.initializer_types.items()
            },
            "quantization": self.quantization,
            "layerport": None if self.record is None else dataclasses.asdict(self.record),
            "metadata": dict(self.metadata),
        }


def describe_model(path: Path) -> ModelDescription:
    """Read and validate ``path``, and describe it; ``BadFile`` if it is not a valid model."""
    model = proto_of(read_model(path))  # an external model's sizes are in its proto
    record = ExportRecord.from_model(model)
    optional = record.optional_inputs if record else []
    initializers = {tensor.name for tensor in model.graph.initializer}
    ops: Counter[str] = Counter()
    types: dict[str, tuple[int, int]] = {}
    for graph in iter_graphs(model.graph):
        ops.update(
            node.op_type if not node.domain else f"{node.domain}.{node.op_type}"
            for node in graph.node
        )
        for tensor in graph.initializer:
            count, size = types.get(element_type_name(tensor.data_type), (0, 0))
            types[element_type_name(tensor.data_type)] = (count + 1, size + _tensor_bytes(tensor))
    return ModelDescription(
        path=path,
        size=path.stat().st_size,
        ir_version=model.ir_version,
        opsets={opset.domain or "ai.onnx": opset.version for opset in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[
            array_spec_of(value, optional)
            for value in model.graph.input
            if value.name not in initializers
        ],
        outputs=[array_spec_of(value) for value in model.graph.output],
        ops=dict(sorted(ops.items())),
        initializers=len(model.graph.initializer),
        weight_bytes=initializer_bytes(model),
        record=record,
        initializer_types=dict(sorted(types.items())),
        quantization={
            **record.quantization,
            "quantized_bytes": quantized_weight_bytes(model),
            "worst_pair_sum": int8_weights_worst_pair_sum(model),
            "int16_max": INT16_MAX,
        }
        if record and record.quantization
        else None,
        metadata={
            prop.key: prop.value
            for prop in model.metadata_props
            if not prop.key.startswith("layerport.")
        },
    )


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of data in the model's initializers: its weights, as the file holds them."""
    return sum(_tensor_bytes(tensor) for tensor in model.graph.initializer)


def _value_dict(spec: ArraySpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "dtype": spec.dtype,
        "dims": [
            {"name": dim, "symbolic": True}
            if isinstance(dim, str)
            else {"size": dim, "symbolic": False}
            for dim in spec.dims
        ],
        "optional": spec.optional,
    }


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    bits = element_bits(tensor.data_type) or 0
    return math.prod(tensor.dims) * bits // 8

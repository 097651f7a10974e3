"""Describing any ONNX file: opset, inputs and outputs, op counts, size, layerport metadata.

Torch-free, and it works on files layerport did not export.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from layerport.metadata import ExportRecord
from layerport.modelfile import iter_graphs, read_model
from layerport.runtime import array_spec_of


def describe_model(path: Path) -> dict[str, Any]:
    """Everything ``layerport inspect`` shows, as plain data."""
    model = read_model(path)
    record = ExportRecord.from_props({prop.key: prop.value for prop in model.metadata_props})
    initializers = {tensor.name for tensor in model.graph.initializer}
    ops: Counter[str] = Counter()
    for graph in iter_graphs(model.graph):
        ops.update(
            node.op_type if not node.domain else f"{node.domain}.{node.op_type}"
            for node in graph.node
        )
    return {
        "path": str(path),
        "size": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {opset.domain or "ai.onnx": opset.version for opset in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [
            _describe_value(value, record)
            for value in model.graph.input
            if value.name not in initializers
        ],
        "outputs": [_describe_value(value, None) for value in model.graph.output],
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items())),
        "initializers": len(model.graph.initializer),
        "weight_bytes": sum(_tensor_bytes(tensor) for tensor in model.graph.initializer),
        "layerport": None if record is None else dataclasses.asdict(record),
        "metadata": {
            prop.key: prop.value
            for prop in model.metadata_props
            if not prop.key.startswith("layerport.")
        },
    }


def _describe_value(value: onnx.ValueInfoProto, record: ExportRecord | None) -> dict[str, Any]:
    optional = set(record.optional_inputs) if record else set()
    spec = array_spec_of(value, optional)
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
    return onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * len(
        onnx.numpy_helper.to_array(tensor).reshape(-1)
    )

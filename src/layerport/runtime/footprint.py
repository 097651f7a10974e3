"""What a run of an ONNX file will allocate, from its shapes, before it runs.

A file's size says nothing about what it makes: 99 bytes of ``Expand`` with a
constant shape produce a gigabyte (issue 30). onnx's shape inference, with
the input sizes the command binds, sizes every value it can; the outputs, the
inputs and the largest intermediate must then fit in the memory limit. That is
a lower bound on what onnxruntime holds (it reuses intermediates' memory, so
their sum would refuse files it runs). Inference is onnx's C++ code reading a
stranger's file, so it runs in a forked child, as the checker does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import onnx

from layerport.dtypes import element_bits
from layerport.errors import BadFile
from layerport.runtime import isolation
from layerport.runtime.limits import check_allocation, format_bytes


def check_run_memory(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]], name: str
) -> None:
    """Refuse to run ``model`` on inputs of these shapes when its tensors exceed the memory limit.

    Raises ``ResourceLimit`` with the figure and the largest tensor, and
    ``BadFile`` when onnx's shape inference crashes on the file. A file onnx
    cannot infer is left to the runtime, which says why it cannot run it.
    """
    sizes = _sizes_in_child(model, input_shapes, name)
    if sizes is None:
        return
    needed, largest, largest_bytes = sizes
    check_allocation(
        needed,
        f"running {name} (its largest tensor, {largest!r}, is {format_bytes(largest_bytes)})",
    )


def _sizes_in_child(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]], name: str
) -> tuple[int, str, int] | None:
    if not isolation.can_isolate():
        return _sizes(model, input_shapes)
    read_end, write_end = os.pipe()

    def work() -> None:
        os.close(read_end)
        sizes = _sizes(model, input_shapes)
        if sizes is not None:
            os.write(write_end, f"{sizes[0]} {sizes[2]} {sizes[1]}".encode())

    try:
        outcome = isolation.outcome_in_child(work)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.read().decode()
    if isinstance(outcome, isolation.ChildCrash):
        raise BadFile(
            f"{name} is not a valid ONNX model: onnx {onnx.__version__}'s shape inference "
            f"{outcome.words()} reading it"
        )
    if not outcome or not answer:
        return None
    needed, largest_bytes, largest = answer.split(" ", 2)
    return int(needed), largest, int(largest_bytes)


def _sizes(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
) -> tuple[int, str, int] | None:
    """Bytes of the inputs, outputs and largest intermediate; the largest tensor and its bytes."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for value in bound.graph.input:
        shape = input_shapes.get(value.name)
        if shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in shape:
            dims.add().dim_value = size
    del bound.graph.value_info[:]  # the file's own claims are not sizes to trust
    try:
        inferred = onnx.shape_inference.infer_shapes(bound, data_prop=True)
    except Exception:
        return None
    graph = inferred.graph
    ends = {value.name for value in [*graph.input, *graph.output]}
    total = 0
    largest, largest_bytes = "", 0
    intermediate = 0
    for value in [*graph.input, *graph.output, *graph.value_info]:
        counted = _bytes_of(value)
        if counted is None:
            continue
        size = counted
        if size > largest_bytes:
            largest, largest_bytes = value.name, size
        if value.name in ends:
            total += size
        else:
            intermediate = max(intermediate, size)
    return total + intermediate, largest, largest_bytes


def _bytes_of(value: onnx.ValueInfoProto) -> int | None:
    """A value's bytes where inference gave every dim a size and its type a width."""
    tensor_type = value.type.tensor_type
    bits = element_bits(tensor_type.elem_type)
    dims = tensor_type.shape.dim
    if bits is None or not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    if not all(dim.HasField("dim_value") and dim.dim_value >= 0 for dim in dims):
        return None
    return -(-math.prod(dim.dim_value for dim in dims) * bits // 8)

"""The external-data layout: a model's large initializers in a data file beside it.

protobuf cannot serialize a message past 2 GiB, so a model whose weights exceed
that keeps them outside the ``.onnx`` file, in one data file named after it
(``linear.onnx`` -> ``linear.onnx.data``): every tensor of at least
``MIN_EXTERNAL_BYTES`` at its own offset (aligned, so onnxruntime can map it),
the ``.onnx`` naming the file relative to its own folder.

In memory such a model is an ``ExternalModel``: a small skeleton proto whose
large tensors are marked external, and their contents as numpy arrays. An
export past ``INLINE_LIMIT`` never holds a proto with its weights in it (the
exporter's arrays are taken over as they are, sharing the module's memory); a
file is read back so by ``modelfile.read_model``, inside the model's folder
only, and onnxruntime gets the arrays through ``add_external_initializers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from layerport.runtime.files import FileContent

DATA_SUFFIX = ".data"
MIN_EXTERNAL_BYTES = 1024  # onnx's own default size_threshold: smaller tensors stay inline
# Tensor bytes past which an export keeps its tensors out of the proto: protobuf's
# 2 GiB less room for the graph itself. Tests lower it to take this path cheaply.
INLINE_LIMIT = 2**31 - 2**24
# Where each tensor starts in the data file: onnxruntime maps a tensor into
# memory, rather than copying it, only at an offset aligned to the page size
# (64 KiB on Windows), as Triton's onnxruntime backend loads the pair.
ALIGNMENT = 2**16
IN_MEMORY = "in-memory"  # the location an ExternalModel's tensors carry until written


@dataclass(frozen=True)
class ExternalModel:
    """A model whose large tensors are held outside its proto, as arrays.

    ``proto`` is the model with those tensors marked external (``data_location``
    EXTERNAL, no data in it); ``tensors`` are their contents by name, C-contiguous
    arrays of the tensors' shapes (a bfloat16 tensor's as 16-bit words). The
    proto is small whatever the weights; it is never written on its own.
    """

    proto: onnx.ModelProto
    tensors: Mapping[str, np.ndarray]

    @property
    def data_bytes(self) -> int:
        """Bytes of the tensors held outside the proto."""
        return sum(array.nbytes for array in self.tensors.values())


# A model in memory: one proto, or one whose large tensors are held beside it.
Model = onnx.ModelProto | ExternalModel


def proto_of(model: Model) -> onnx.ModelProto:
    """The proto of ``model``: its graph, metadata and small tensors (the skeleton, if external)."""
    return model.proto if isinstance(model, ExternalModel) else model


def data_file_name(model_name: str) -> str:
    """The data file of the model file named ``model_name``: ``model.onnx.data``."""
    return model_name + DATA_SUFFIX


def mark_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` refer to ``length`` bytes at ``offset`` of ``location``, holding no data."""
    for field in (
        "raw_data",
        "float_data",
        "int32_data",
        "int64_data",
        "double_data",
        "uint64_data",
    ):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))


def detach_tensors(model: onnx.ModelProto) -> ExternalModel:
    """``model`` with every initializer of at least ``MIN_EXTERNAL_BYTES`` held outside it.

    For a model that fits in memory as one proto (``--external-data`` on a small
    layer): the arrays are copies of the tensors' data.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    tensors: dict[str, np.ndarray] = {}
    for tensor in proto.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            raise ValueError(f"tensor {tensor.name!r} is already external")
        array = np.ascontiguousarray(numpy_helper.to_array(tensor))
        if array.nbytes < MIN_EXTERNAL_BYTES or array.dtype == object:
            continue
        if tensor.data_type == TensorProto.BFLOAT16:
            array = array.view(np.uint16)
        tensors[tensor.name] = array
        mark_external(tensor, IN_MEMORY, 0, array.nbytes)
    return ExternalModel(proto, tensors)


def external_layout(model: ExternalModel, model_name: str) -> dict[str, FileContent]:
    """The files that hold ``model`` as ``model_name``, by name: the data file, then the model.

    The data file is given as the arrays' memory in order, with zero padding
    between them, so it is written without being copied into one buffer. The
    model file comes last: a writer puts its data in place before it.
    """
    data_name = data_file_name(model_name)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    chunks: list[memoryview] = []
    offset = 0
    for tensor in proto.graph.initializer:
        array = model.tensors.get(tensor.name)
        if array is None:
            continue
        padding = -offset % ALIGNMENT
        if padding:
            chunks.append(memoryview(bytes(padding)))
            offset += padding
        chunks.append(np.ascontiguousarray(array).data.cast("B"))
        mark_external(tensor, data_name, offset, array.nbytes)
        offset += array.nbytes
    files: dict[str, FileContent] = {data_name: chunks} if chunks else {}
    files[model_name] = proto.SerializeToString(deterministic=True)
    return files


def checkable_skeleton(model: ExternalModel) -> onnx.ModelProto:
    """``model``'s proto with its external tensors declared as graph inputs instead.

    onnx's checker looks for an external tensor's file relative to the current
    folder when handed a proto; declared as inputs of the same type and shape,
    the tensors are checked (and their shapes inferred) without their data.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    kept = [tensor for tensor in proto.graph.initializer if tensor.name not in model.tensors]
    inputs = {value.name for value in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.name in model.tensors and tensor.name not in inputs:
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return proto

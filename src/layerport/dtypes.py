"""Every fact about a precision layerport exports, in one table.

A precision is known by its name (``float32``), which is also its numpy dtype's
and torch dtype's name. For each, the table gives its ONNX element type, its
item size and its default verification tolerance. Adding a precision is one
entry in ``PRECISIONS`` plus its tests.

This module is imported at start-up (the CLI's ``--dtype`` choices), so it
imports neither numpy, onnx nor torch: the ONNX element types are the
``onnx.TensorProto.DataType`` numbers (from ``onnx/onnx.proto``), and torch and
numpy dtypes are looked up when asked for.

Element types that are not precisions (integer inputs, booleans) are described
through onnx's own mapping, ``onnx.helper.tensor_dtype_to_np_dtype``, in
``element_type_name`` and ``element_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Tolerance:
    """Values pass when ``|actual - expected| <= atol + rtol * |expected| + of_range * max |expected|``."""

    atol: float
    """The absolute part, in the output's units. Example: ``1e-5``."""

    rtol: float
    """The part relative to the trusted engine's value. Example: ``1e-4``."""

    of_range: float = 0.0
    """The part relative to the output's range, max |expected| over the output: the
    rule for int8, whose error scales with the range, not with each value. Example: ``1e-3``."""

    def describe(self) -> str:
        """``atol 1e-05, rtol 0.0001``, as reports and messages give it."""
        if self.of_range and not (self.atol or self.rtol):
            return f"{self.of_range:g} of the output's range"
        range_part = f", {self.of_range:g} of the output's range" if self.of_range else ""
        return f"atol {self.atol:g}, rtol {self.rtol:g}{range_part}"


@dataclass(frozen=True)
class Precision:
    """One floating-point precision: its names in numpy, ONNX and torch, and its tolerance."""

    name: str
    onnx_element_type: int  # onnx.TensorProto.DataType
    itemsize: int  # bytes per element
    tolerance: Tolerance
    kserve_datatype: str  # the KServe v2 protocol's name, which Triton uses too
    significand_bits: int  # the implicit bit included: 24 for float32

    @property
    def epsilon(self) -> float:
        """One unit in the last place of 1.0: ``2 ** -23`` for float32."""
        return 2.0 ** (1 - self.significand_bits)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        import numpy as np

        if self.name == "bfloat16":
            # numpy has no bfloat16; ml_dtypes (an onnx dependency) gives the one
            # onnx's reference evaluator and numpy_helper use.
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.name)

    @property
    def reduced(self) -> bool:
        """Narrower than float32: verification also reports what the precision costs."""
        return self.itemsize < 4

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype = getattr(torch, self.name)
        assert isinstance(dtype, torch.dtype)
        return dtype


# name, ONNX element type, bytes per element, default tolerance, KServe datatype,
# significand bits.
# 11 and 8 significant bits: one float16 or bfloat16 rounding is 4.9e-4 and 3.9e-3 of the value.
PRECISIONS: dict[str, Precision] = {
    precision.name: precision
    for precision in (
        Precision("float32", 1, 4, Tolerance(1e-5, 1e-4), "FP32", 24),
        Precision("float64", 11, 8, Tolerance(1e-10, 1e-8), "FP64", 53),
        Precision("float16", 10, 2, Tolerance(1e-2, 1e-2), "FP16", 11),
        Precision("bfloat16", 16, 2, Tolerance(5e-2, 5e-2), "BF16", 8),
    )
}
DTYPES = tuple(PRECISIONS)
DEFAULT_DTYPE = "float32"
# What a layer's input or output may declare (``spec.Tensor.dtype``): ``float``
# is the layer's precision, whichever it is exported in; the others are fixed
# element types (token ids, a padding mask), named as numpy names them, which
# ``kserve_datatype`` and the ONNX element types know too.
FLOAT = "float"
INTEGER_TYPES = ("int64", "int32")
TENSOR_DTYPES = (FLOAT, *INTEGER_TYPES, "bool")
# Quantization recipes applied to a float32 export (``export --quantize``): not
# dtypes, since the file's inputs and outputs stay float32.
QUANTIZATIONS = ("int8",)
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    **{name: precision.tolerance for name, precision in PRECISIONS.items()},
    # An int8 file against an eager run of the same quantization (verify.quantized):
    # the same integers, so only float32 rounding of the scales and a rare activation
    # rounded the other way separate them; saturation costs 10% and more.
    "int8": Tolerance(0.0, 0.0, of_range=1e-3),
}
# An int8 file against the float32 layer (bench, a served model): what int8 costs.
# Dynamic int8 with 7-bit weights cost 1% to 4.4% of the range in measurements.
INT8_AGAINST_FLOAT = Tolerance(0.0, 0.0, of_range=0.05)


def precision(name: str) -> Precision:
    """The precision called ``name``; ``KeyError`` for any other name."""
    return PRECISIONS[name]


def element_type_name(element_type: int) -> str:
    """A name for an ONNX element type: ``float32``, ``int64``, ``bool``, ``bfloat16``.

    The numpy name where numpy has one (through onnx's own mapping), else the
    ONNX name in lower case.
    """
    import onnx

    for candidate in PRECISIONS.values():
        if candidate.onnx_element_type == element_type:
            return candidate.name
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(element_type).name)
    except (KeyError, ValueError, TypeError):
        return str(onnx.TensorProto.DataType.Name(element_type)).lower()


# The KServe v2 protocol's names for the element types that are not precisions
# (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/,
# "Tensor Data Types"); Triton's model configuration spells each ``TYPE_`` + name.
_KSERVE_DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
}  # fmt: skip


def kserve_datatype(name: str) -> str:
    """The KServe v2 datatype of an element type named as ``element_type_name`` names it.

    ``float32`` is ``FP32``; Triton's ``config.pbtxt`` writes it ``TYPE_FP32``.
    Raises ``KeyError`` for a type the protocol cannot carry.
    """
    if name in PRECISIONS:
        return PRECISIONS[name].kserve_datatype
    return _KSERVE_DATATYPES[name]


def kserve_element_type_name(datatype: str) -> str:
    """The element type name (``float32``) of a KServe v2 datatype (``FP32``): ``kserve_datatype``'s inverse.

    A datatype outside the table keeps its own name in lower case.
    """
    for name in (*PRECISIONS, *_KSERVE_DATATYPES):
        if kserve_datatype(name) == datatype:
            return name
    return datatype.lower()


def element_bits(element_type: int) -> int | None:
    """Bits per element of an ONNX element type, or ``None`` for strings and unknown types.

    onnx maps each element type to a numpy dtype; the sub-byte types (int2,
    int4, float4, float6) are packed in ONNX, as ``onnx.helper.make_tensor``
    packs them, though their numpy dtypes take a byte each.
    """
    import onnx

    kind = onnx.TensorProto
    packed: dict[int, int] = {
        kind.INT4: 4, kind.UINT4: 4, kind.FLOAT4E2M1: 4, kind.INT2: 2, kind.UINT2: 2,
        kind.FLOAT6E2M3: 6, kind.FLOAT6E3M2: 6,
    }  # fmt: skip
    if element_type in packed:
        return packed[element_type]
    if element_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        return int(onnx.helper.tensor_dtype_to_np_dtype(element_type).itemsize) * 8
    except (KeyError, ValueError, TypeError):
        return None

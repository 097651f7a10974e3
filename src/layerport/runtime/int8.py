"""int8 arithmetic in numpy: dynamic activation quantization, and the integer products
of onnxruntime's CPU kernels, exactly or as x86 CPUs without VNNI compute them.

onnxruntime's dynamic quantization pairs uint8 activations with int8 (or uint8)
weights. Its x86 kernels multiply the raw stored values and subtract the zero
points afterwards (with row and column sums), so the products that matter are
``a * w`` with ``0 <= a <= 255`` and ``w`` as stored.

On a CPU with VNNI (``vpdpbusd``), four ``u8 x s8`` products are summed straight
into int32: nothing saturates. On AVX2 without VNNI (EPYC before Zen 4, Xeon
before Cascade Lake), ``vpmaddubsw`` adds each pair of adjacent products along
the reduced axis into a *saturating* int16, and only then widens to int32. With
full 8-bit weights a pair reaches ``255 * 127 * 2 = 64770 > 32767``: such sums
clip, and the output is wrong (OpenVINO's "saturation issue" note; onnxruntime's
quantization guide, ``reduce_range``). ``integer_matmul(..., saturating=True)``
computes that arithmetic.

**The bound.** Let a pair of stored weights be ``w0, w1`` and any activations
``a0, a1`` in ``[0, 255]``. Then ``a0*w0 + a1*w1`` is at most
``255 * (max(w0, 0) + max(w1, 0))`` and at least ``-255 * (max(-w0, 0) + max(-w1, 0))``,
and both are reached. So a weight tensor can never saturate, whatever the
activations, exactly when ``worst_pair_sum(weights) <= 32767``. With 7-bit
weights (``|w| <= 64``, onnxruntime's ``reduce_range``):
``255 * 64 * 2 = 32640 <= 32767``, so they never saturate on any CPU. uint8
weights are multiplied as ``u8 x u8`` through 16-bit widening (``vpmaddwd``),
which cannot saturate either; ``worst_pair_sum`` applies to signed weights only.

This module needs numpy only: ``inspect`` uses it, and verification builds its
reference on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

INT16_MAX = 32767
UINT8_MAX = 255


def dynamic_quantize(values: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """``DynamicQuantizeLinear``: uint8 values, scale and zero point of a float32 array.

    The range is widened to include 0; scale ``(max - min) / 255``; zero point
    ``round(-min / scale)`` clipped to ``[0, 255]``; values
    ``clip(round(x / scale) + zero_point, 0, 255)``, rounding half to even, in
    float32 as the ONNX operator specifies.
    """
    values = np.asarray(values, dtype=np.float32)
    low = np.float32(min(float(values.min(initial=0.0)), 0.0))
    high = np.float32(max(float(values.max(initial=0.0)), 0.0))
    scale = np.float32((high - low) / np.float32(UINT8_MAX))
    if scale == 0:
        return np.zeros(values.shape, np.uint8), np.float32(0.0), np.uint8(0)
    zero_point = np.uint8(np.clip(np.rint(-low / scale), 0, UINT8_MAX))
    quantized = np.clip(np.rint(values / scale) + np.float32(zero_point), 0, UINT8_MAX)
    return quantized.astype(np.uint8), scale, zero_point


def integer_matmul(
    activations: np.ndarray,
    activation_zero_point: int,
    weights: np.ndarray,
    weight_zero_point: int | np.ndarray,
    *,
    saturating: bool = False,
) -> np.ndarray:
    """``MatMulInteger``: ``(a - a_zero) @ (w - w_zero)`` in int32, ``a`` (..., K) uint8, ``w`` (K, N).

    ``saturating`` computes it as AVX2 without VNNI does for int8 weights: each
    pair of adjacent products along K summed into an int16 that clips at
    ``[-32768, 32767]``, the pairs then summed in int32, and the zero points
    subtracted through row and column sums. uint8 weights never saturate.
    ``weight_zero_point`` is a scalar, or one per column (per-channel weights).
    """
    a = activations.astype(np.int64)
    w = weights.astype(np.int64)
    w_zero = np.asarray(weight_zero_point, dtype=np.int64)
    if not saturating or weights.dtype != np.int8:
        return ((a - int(activation_zero_point)) @ (w - w_zero)).astype(np.int32)
    depth = w.shape[0]
    if depth % 2:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], 1), np.int64)], axis=-1)
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int64)], axis=0)
    rows = a.reshape(-1, a.shape[-1])
    raw = np.empty((rows.shape[0], w.shape[1]), np.int64)
    even, odd = w[0::2], w[1::2]
    for index, row in enumerate(rows):
        pairs = row[0::2, None] * even + row[1::2, None] * odd
        raw[index] = np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(axis=0)
    raw = raw.reshape(*a.shape[:-1], w.shape[1])
    # sum (a - za)(w - zw) = sum a*w - za*sum w - zw*sum a + K*za*zw
    a_zero = int(activation_zero_point)
    result = (
        raw
        - a_zero * w[:depth].sum(axis=0)
        - w_zero * a[..., :depth].sum(axis=-1, keepdims=True)
        + depth * a_zero * w_zero
    )
    return result.astype(np.int32)


def worst_pair_sum(weights: np.ndarray, axis: int = -2) -> int:
    """The largest ``|a0*w0 + a1*w1|`` any uint8 activations reach with a pair of ``weights``.

    Pairs are adjacent along ``axis``, the reduced one (K of a (K, N) weight).
    Above ``INT16_MAX`` the weights saturate on AVX2 without VNNI for some
    activations; at or below it, never (the bound in this module's docstring).
    """
    w = np.moveaxis(np.asarray(weights, dtype=np.int64), axis, 0)
    if w.shape[0] % 2:
        w = np.concatenate([w, np.zeros((1, *w.shape[1:]), np.int64)], axis=0)
    even, odd = w[0::2], w[1::2]
    positive = np.maximum(even, 0) + np.maximum(odd, 0)
    negative = np.maximum(-even, 0) + np.maximum(-odd, 0)
    return UINT8_MAX * int(max(positive.max(initial=0), negative.max(initial=0)))


def _quantized_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The 8-bit weights onnxruntime's quantizer wrote (``W_quantized``), in every graph."""
    import onnx
    from onnx import numpy_helper

    from layerport.runtime.modelfile import iter_graphs

    return [
        numpy_helper.to_array(tensor)
        for graph in iter_graphs(model.graph)
        for tensor in graph.initializer
        if tensor.name.endswith("_quantized")
        and tensor.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    ]


def quantized_weight_bytes(model: onnx.ModelProto) -> int:
    """How many bytes of the model's weights are 8-bit quantized ones."""
    return sum(weights.nbytes for weights in _quantized_weights(model))


def int8_weights_worst_pair_sum(model: onnx.ModelProto) -> int:
    """``worst_pair_sum`` over every signed quantized weight of ``model`` (0 if none).

    Above ``INT16_MAX``, the file's int8 products saturate on x86 CPUs without
    VNNI; at or below, on no CPU. ``MatMulInteger``'s (K, N) and
    ``DynamicQuantizeLSTM``'s (directions, K, 4 x hidden) weights both reduce
    over their next-to-last axis.
    """
    return max(
        (worst_pair_sum(w) for w in _quantized_weights(model) if w.dtype == np.int8), default=0
    )

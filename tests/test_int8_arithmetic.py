"""int8 arithmetic in numpy (``runtime.int8``): the exact products, the saturating ones of
AVX2 without VNNI, and the bound that keeps the default recipe's weights out of saturation.

Nothing here runs onnxruntime's int8 kernels, so nothing depends on which x86 CPU runs it.
The oracles are plain int64 products, computed in the test.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from layerport.runtime.int8 import (
    INT16_MAX,
    dynamic_quantize,
    int8_weights_worst_pair_sum,
    integer_matmul,
    worst_pair_sum,
)


def _pairs_oracle(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum over pairs of clip(a[2i] w[2i] + a[2i+1] w[2i+1]) for one row, the slow way."""
    out = np.zeros(w.shape[1], np.int64)
    for column in range(w.shape[1]):
        for k in range(0, w.shape[0], 2):
            pair = int(a[k]) * int(w[k, column])
            if k + 1 < w.shape[0]:
                pair += int(a[k + 1]) * int(w[k + 1, column])
            out[column] += min(max(pair, -32768), 32767)
    return out


def test_dynamic_quantize_follows_dynamicquantizelinear() -> None:
    x = np.array([-1.0, 0.0, 0.5, 2.0], np.float32)
    q, scale, zero = dynamic_quantize(x)
    assert scale == np.float32(3.0 / 255)
    assert zero == 85  # round(1 / (3/255))
    assert q.tolist() == [0, 85, 127, 255]  # 0.5 / scale = 42.5 rounds to even, 42
    # The range always holds 0: all-positive values get zero point 0.
    assert dynamic_quantize(np.array([1.0, 2.0], np.float32))[2] == 0
    # onnx's reference evaluator agrees on random values.
    from onnx.reference import ReferenceEvaluator

    node = onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    values = np.random.default_rng(3).standard_normal((7, 9)).astype(np.float32)
    reference = ReferenceEvaluator(node).run(None, {"x": values})
    ours = dynamic_quantize(values)
    assert (reference[0] == ours[0]).all() and reference[1] == ours[1] and reference[2] == ours[2]


def test_exact_integer_matmul_is_the_int64_product() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 33), dtype=np.uint8)
    w = rng.integers(-128, 128, (33, 7), dtype=np.int8)
    expected = (a.astype(np.int64) - 3) @ (w.astype(np.int64) - 0)
    assert (integer_matmul(a, 3, w, 0) == expected).all()


def test_saturating_matmul_clips_each_pair_like_vpmaddubsw() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 33), dtype=np.uint8)  # odd K: the last pair is half
    w = rng.integers(-128, 128, (33, 5), dtype=np.int8)
    saturated = integer_matmul(a, 7, w, 0, saturating=True)
    for row in range(3):
        expected = _pairs_oracle(a[row], w) - 7 * w.astype(np.int64).sum(axis=0)
        assert (saturated[row] == expected).all()
    # The largest pairs do clip: 255*127 + 255*127 = 64770 becomes 32767.
    big = np.full((1, 2), 255, np.uint8), np.full((2, 1), 127, np.int8)
    assert integer_matmul(*big[:1], 0, big[1], 0, saturating=True)[0, 0] == INT16_MAX
    assert integer_matmul(*big[:1], 0, big[1], 0)[0, 0] == 64770


def test_worst_pair_sum_is_reached_and_bounds_every_activation() -> None:
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (16, 4), dtype=np.int8)
    worst = worst_pair_sum(w)
    a = rng.integers(0, 256, (2000, 16), dtype=np.uint8)
    a[0] = np.where(w[:, int(np.argmax(w.sum(axis=0)))] > 0, 255, 0)  # one extreme activation
    pairs = (
        a[:, 0::2, None].astype(np.int64) * w[0::2] + a[:, 1::2, None].astype(np.int64) * w[1::2]
    )
    assert np.abs(pairs).max() <= worst
    # Reached: 255 on every positive weight of the pair with the largest positive sum.
    positive = np.maximum(w[0::2], 0).astype(np.int64) + np.maximum(w[1::2], 0)
    negative = np.maximum(-w[0::2], 0).astype(np.int64) + np.maximum(-w[1::2], 0)
    assert worst == 255 * max(positive.max(), negative.max())


def test_the_bound_holds_for_7_bit_weights_and_fails_for_8_bit_ones() -> None:
    # 7-bit weights lie in [-64, 64]: 255 * 64 * 2 = 32640 <= 32767, on any pair.
    assert worst_pair_sum(np.full((2, 1), 64, np.int8)) == 32640 <= INT16_MAX
    assert worst_pair_sum(np.full((2, 1), -64, np.int8)) == 32640
    assert worst_pair_sum(np.full((2, 1), 127, np.int8)) == 64770 > INT16_MAX
    # Exhaustively: every pair of 7-bit weights and the extreme activations of each sign.
    weights = np.arange(-64, 65)
    pairs = weights[:, None] + weights[None, :]
    assert 255 * np.abs(pairs).max() <= INT16_MAX


@pytest.mark.parametrize("bits", [7, 8])
def test_a_model_s_weights_are_measured_in_every_graph(bits: int) -> None:
    limit = 64 if bits == 7 else 127
    weight = np.full((4, 3), limit, np.int8)
    graph = onnx.helper.make_graph(
        [], "g", [], [], [numpy_helper.from_array(weight, "W_quantized")]
    )
    model = onnx.helper.make_model(graph)
    assert int8_weights_worst_pair_sum(model) == 255 * 2 * limit

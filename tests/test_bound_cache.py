"""A KV cache in bound buffers (``runtime.bound``, issue 29): written in place, equal to a copied one.

The oracle is the same file in a plain onnxruntime session, its cache fed
back each call: the bound variant must give the same outputs, bit for bit,
and the same cache, from buffers longer than the tokens they hold. The graphs
here are built with onnx's helper around onnxruntime's ``GroupQueryAttention``,
so the rules of what may be bound are tried one by one; the decoder model
file's own bound decoding is tested in ``test_decoder_model``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from layerport.errors import ResourceLimit, UserInputError
from layerport.runtime.bound import PAST_LENGTH, BoundCache, bound_model
from layerport.runtime.session import Session

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16
WIDTH = (HEADS + 2 * KV_HEADS) * HEAD_DIM
CARRY = (("past_key", "present_key"), ("past_value", "present_value"))


def attention_model(*, bias: bool = False, extra: onnx.NodeProto | None = None) -> onnx.ModelProto:
    """One GroupQueryAttention over a cache, its lengths read from the cache's shape, as
    layerport's fused files read them; rotary tables for 64 positions."""
    angles = np.arange(64)[:, None] / 10000 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    tables = [
        numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
        numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin"),
        numpy_helper.from_array(np.array(1, np.int32), "one"),
    ]
    nodes = [
        helper.make_node("Shape", ["qkv"], ["seq"], start=1, end=2),
        helper.make_node("Shape", ["past_key"], ["past"], start=2, end=3),
        helper.make_node("Shape", ["past_key"], ["batch"], start=0, end=1),
        helper.make_node("Add", ["past", "seq"], ["total64"]),
        helper.make_node("Cast", ["total64"], ["total1"], to=TensorProto.INT32),
        helper.make_node("Squeeze", ["total1"], ["total"]),
        helper.make_node("Sub", ["total1", "one"], ["last"]),
        helper.make_node("Expand", ["last", "batch"], ["seqlens"]),
        helper.make_node(
            "GroupQueryAttention",
            ["qkv", "", "", "past_key", "past_value", "seqlens", "total", "cos", "sin", ""]
            + (["mask"] if bias else []),
            ["y", "present_key", "present_value"],
            domain="com.microsoft",
            num_heads=HEADS,
            kv_num_heads=KV_HEADS,
            do_rotary=1,
            scale=HEAD_DIM**-0.5,
        ),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y", "present_key", "present_value")]  # fmt: skip
    if extra is not None:
        nodes.append(extra)
        outputs.append(helper.make_tensor_value_info(extra.output[0], TensorProto.FLOAT, None))
    cache = ["batch", KV_HEADS, "past", HEAD_DIM]
    inputs = [
        helper.make_tensor_value_info("qkv", TensorProto.FLOAT, ["batch", "seq", WIDTH]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT, cache),
        helper.make_tensor_value_info("past_value", TensorProto.FLOAT, cache),
    ]
    if bias:
        mask = ["batch", 1, "seq", "total"]
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, mask))
    graph = helper.make_graph(nodes, "attention", inputs, outputs, tables)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def plain_stream(model: onnx.ModelProto, chunks: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    session = Session(model, "plain", smallest={"past": 0})
    cache = {name: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32) for name, _ in CARRY}
    results = []
    for qkv in chunks:
        outputs = session.run({"qkv": qkv, **cache})
        cache = {given: outputs[made] for given, made in CARRY}
        results.append(outputs)
    return results


def chunks(prompt: int, steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(prompt * 31 + steps)
    sizes = [prompt] + [1] * steps
    return [rng.standard_normal((1, size, WIDTH)).astype(np.float32) for size in sizes]


@pytest.mark.parametrize(("prompt", "steps", "slack"), [(1, 1, 0), (5, 9, 0), (7, 20, 13)])
def test_a_bound_cache_decodes_as_a_copied_one(prompt: int, steps: int, slack: int) -> None:
    model = attention_model()
    bound = bound_model(model)
    assert bound is not None
    assert PAST_LENGTH in {value.name for value in bound.graph.input}
    assert PAST_LENGTH not in {value.name for value in model.graph.input}  # the file is untouched
    calls = chunks(prompt, steps)
    expected = plain_stream(model, calls)
    empty = {name: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32) for name, _ in CARRY}
    cache = BoundCache(Session(bound, "bound"), CARRY, empty, prompt + steps + slack)
    for qkv, plain in zip(calls, expected, strict=True):
        np.testing.assert_array_equal(cache({"qkv": qkv})["y"], plain["y"])
    assert cache.length == prompt + steps
    for given, made in CARRY:
        np.testing.assert_array_equal(cache.cache()[made], expected[-1][made])
        # In place: the buffer bound as the input is the one that holds the grown cache.
        held = cache.buffers[given].numpy()
        assert held.shape[2] == prompt + steps + slack
        np.testing.assert_array_equal(held[:, :, : prompt + steps], expected[-1][made])


def test_a_bound_cache_can_start_from_a_filled_one() -> None:
    model = attention_model()
    bound = bound_model(model)
    assert bound is not None
    calls = chunks(6, 3)
    expected = plain_stream(model, calls)
    filled = {given: expected[0][made] for given, made in CARRY}
    cache = BoundCache(Session(bound, "bound"), CARRY, filled, 20)
    assert cache.length == 6
    for qkv, plain in zip(calls[1:], expected[1:], strict=True):
        np.testing.assert_array_equal(cache({"qkv": qkv})["y"], plain["y"])


def test_a_bound_cache_refuses_a_call_it_cannot_hold() -> None:
    bound = bound_model(attention_model())
    assert bound is not None
    empty = {name: np.zeros((1, KV_HEADS, 0, HEAD_DIM), np.float32) for name, _ in CARRY}
    cache = BoundCache(Session(bound, "bound"), CARRY, empty, 4)
    with pytest.raises(UserInputError, match="holds 4 positions; this call would make 5"):
        cache({"qkv": np.zeros((1, 5, WIDTH), np.float32)})
    cache({"qkv": np.zeros((1, 2, WIDTH), np.float32)})
    with pytest.raises(UserInputError, match="one token per call after the prefill, got 2"):
        cache({"qkv": np.zeros((1, 2, WIDTH), np.float32)})


def test_a_bound_cache_refuses_what_it_cannot_make_or_hold() -> None:
    """From Python: a capacity shorter than the cache it starts from, or past the memory limit,
    and a call of no tokens, are the caller's mistakes (``UserInputError``), not numpy's or
    onnxruntime's errors."""
    bound = bound_model(attention_model())
    assert bound is not None
    session = Session(bound, "bound")
    filled = {name: np.zeros((1, KV_HEADS, 6, HEAD_DIM), np.float32) for name, _ in CARRY}
    for capacity in (5, -5):
        with pytest.raises(
            UserInputError, match=f"a capacity of at least 7 positions, got {capacity}$"
        ):
            BoundCache(session, CARRY, filled, capacity)
    # Two caches of (1, 2, 10**12, 16) float32: 256 bytes a position.
    with pytest.raises(ResourceLimit, match=r"of 1000000000000 positions needs about 232\.8 TiB"):
        BoundCache(session, CARRY, filled, 10**12)
    empty = {name: array[:, :, :0] for name, array in filled.items()}
    with pytest.raises(UserInputError, match="a call takes at least one token, got 0"):
        BoundCache(session, CARRY, empty, 4)({"qkv": np.zeros((1, 0, WIDTH), np.float32)})


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (attention_model(bias=True), "a padding mask as wide as the buffer"),
        (
            attention_model(extra=helper.make_node("Neg", ["past_key"], ["negated"])),
            "the cache read other than by the attention",
        ),
        (
            attention_model(extra=helper.make_node("Shape", ["past_key"], ["dims"])),
            "the length read with the other dims",
        ),
        (
            helper.make_model(
                helper.make_graph(
                    [helper.make_node("Concat", ["past", "x"], ["present"], axis=2)],
                    "standard",
                    [
                        helper.make_tensor_value_info("past", TensorProto.FLOAT, [1, 2, "p", 4]),
                        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 4]),
                    ],
                    [helper.make_tensor_value_info("present", TensorProto.FLOAT, None)],
                )
            ),
            "a cache grown by Concat, as the standard form's",
        ),
    ],
    ids=["mask", "other-reader", "all-dims", "standard"],
)
def test_files_whose_cache_cannot_be_bound_keep_the_copy(model: onnx.ModelProto, why: str) -> None:
    assert bound_model(model) is None, why


def test_a_decoding_that_carries_more_than_the_attention_keeps_the_copy() -> None:
    """A state fed back besides the attention's caches (a recurrent layer's) has no positions:
    such a file is not bound."""
    model = attention_model()
    assert bound_model(model, ["past_key", "past_value"]) is not None
    assert bound_model(model, ["past_key", "past_value", "h0"]) is None

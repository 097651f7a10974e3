"""``attention``: multi-head attention whose KV cache is state, carried from call to call.

One file serves the prefill (``past`` 0) and every decode step: the call's
keys and values are appended to ``past_key`` and ``past_value`` and returned
as ``present_key`` and ``present_value``, rotated (rotary embeddings) at their
positions, ``past`` onwards. The weights load under either of torch's layouts:
``nn.MultiheadAttention``'s (``in_proj_weight``, ``out_proj``) or separate
projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, Llama's names).

This module declares the spec and stays torch-free; ``module`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport.plugin import (
    ALL_PRECISIONS,
    Dim,
    ExportForm,
    InvalidParameter,
    LayerSpec,
    Param,
    Params,
    ParamValue,
    Streaming,
    Tensor,
)

if TYPE_CHECKING:
    import onnx
    from torch import nn

BATCH = Dim("batch", 4, "samples", check_size=9)
SEQ = Dim("seq", 8, "the call's tokens: the prompt at prefill, 1 per decode step", check_size=21)
PAST = Dim("past", 6, "tokens already in the cache (0 at prefill)", check_size=17, min_size=0)
# Sizes that 0 leaves to the others: torch's and Llama's conventions.
KV_HEADS = "num_kv_heads if num_kv_heads else num_heads"
HEAD_DIM = "head_dim if head_dim else embed_dim // num_heads"
CACHE = ("batch", KV_HEADS, "past", HEAD_DIM)
GROWN = ("batch", KV_HEADS, "past + seq", HEAD_DIM)

PARAMS = (
    Param("embed_dim", int, 32, "features per token, in and out", minimum=1),
    Param("num_heads", int, 4, "query heads (a checkpoint cannot tell: give it)", minimum=1),
    Param(
        "num_kv_heads",
        int,
        0,
        "key/value heads, fewer for grouped-query attention; 0: num_heads",
        minimum=0,
    ),
    Param("head_dim", int, 0, "features per head; 0: embed_dim // num_heads", minimum=0),
    Param(
        "layout",
        str,
        "separate",
        "weight names: separate (q_proj, k_proj, v_proj, o_proj) or packed "
        "(nn.MultiheadAttention's in_proj_weight, out_proj)",
        choices=("separate", "packed"),
    ),
    Param("qkv_bias", bool, True, "the query, key and value projections have biases"),
    Param("out_bias", bool, True, "the output projection has a bias"),
    Param("causal", bool, True, "each token attends to itself and earlier ones only"),
    Param("rotary", bool, True, "rotary position embeddings on queries and keys (Llama's)"),
    Param("rope_base", float, 10000.0, "rotary embeddings' base (Llama: 10000)", minimum=1.0),
)


INPUTS = (
    Tensor("x", ("batch", "seq", "embed_dim"), "the call's tokens"),
    Tensor("past_key", CACHE, "the cache's keys, rotated (past 0 at prefill)"),
    Tensor("past_value", CACHE, "the cache's values"),
    Tensor(
        "padding_mask",
        ("batch", "seq"),
        "true at the call's padding tokens, which no token attends to; none if omitted",
        optional=True,
        dtype="bool",
    ),
    Tensor(
        "past_padding",
        ("batch", "past"),
        "the cache's padding (present_padding of the call before); none if omitted",
        optional=True,
        dtype="bool",
    ),
)
OUTPUTS = (
    Tensor("y", ("batch", "seq", "embed_dim"), "the call's outputs"),
    Tensor("present_key", GROWN, "past_key with the call's keys appended"),
    Tensor("present_value", GROWN, "past_value with the call's values appended"),
    Tensor(
        "present_padding",
        ("batch", "past + seq"),
        "past_padding, then padding_mask",
        dtype="bool",
    ),
)
# The cache grows by each call's tokens; the proof streams a prefill, then single steps.
STREAMING = Streaming(
    dim="seq",
    carry=(
        ("past_key", "present_key"),
        ("past_value", "present_value"),
        ("past_padding", "present_padding"),
    ),
    grows="past",
    # Without the causal mask a token attends to later ones: no stream has them yet.
    unless="not causal",
)


def fused_refusal(params: Params, dtype: str) -> str | None:
    """Why ``GroupQueryAttention`` cannot compute this layer in ``dtype``, or ``None``."""
    _, _, head_dim = head_sizes(params)
    if not params["causal"]:
        return "onnxruntime's GroupQueryAttention is causal only"
    if dtype not in ("float32", "float16"):
        return f"onnxruntime's GroupQueryAttention has CPU kernels for float32 and float16, not {dtype}"
    if params["rotary"] and head_dim % 16:
        # onnxruntime 1.32: "head_size shall be a multiple of 16" with do_rotary.
        return f"onnxruntime's GroupQueryAttention rotates heads of a multiple of 16 features, not {head_dim}"
    return None


def _fused_translations() -> Mapping[Any, Callable[..., Any]]:
    from layerport_attention.fused import translations

    return translations()


def _finish_fused(model: onnx.ModelProto) -> None:
    from layerport_attention.fused_graph import finish_fused

    finish_fused(model)


FUSED = ExportForm(
    name="fused",
    description="onnxruntime's contrib operators: Q, K and V in one MatMul, "
    "GroupQueryAttention with the rotary embeddings inside it",
    refuses=fused_refusal,
    translations=_fused_translations,
    finish=_finish_fused,
)

# What every layer with this cache declares alike: its dims, tensors, stream and precisions.
CACHED_LAYER: dict[str, Any] = {
    "dims": (BATCH, SEQ, PAST),
    "inputs": INPUTS,
    "outputs": OUTPUTS,
    "streaming": STREAMING,
    "batch_dim": "batch",
    "precisions": {name: ALL_PRECISIONS[name] for name in ("float32", "float64", "float16")},
    "forms": (FUSED,),
}


def head_sizes(params: Params) -> tuple[int, int, int]:
    """``(num_heads, num_kv_heads, head_dim)``, zeros resolved; ``InvalidParameter`` if they
    do not fit together."""
    heads = int(params["num_heads"])
    kv_heads = int(params["num_kv_heads"]) or heads
    head_dim = int(params["head_dim"]) or int(params["embed_dim"]) // heads
    if head_dim < 1:
        raise InvalidParameter(
            f"embed_dim={params['embed_dim']} leaves no features for {heads} heads; set head_dim"
        )
    if heads % kv_heads:
        raise InvalidParameter(
            f"num_heads={heads} must be a multiple of num_kv_heads={kv_heads} "
            "(each key/value head serves a group of query heads)"
        )
    if params["rotary"] and head_dim % 2:
        raise InvalidParameter(f"rotary embeddings need an even head_dim, got {head_dim}")
    if params.get("layout") == "packed" and (
        kv_heads != heads or heads * head_dim != params["embed_dim"]
    ):
        raise InvalidParameter(
            "layout=packed is nn.MultiheadAttention's: num_kv_heads must equal num_heads and "
            "num_heads * head_dim embed_dim"
        )
    return heads, kv_heads, head_dim


def attention_weights(params: Params) -> dict[str, tuple[int, ...]]:
    """The state dict's names and shapes, in either layout."""
    heads, kv_heads, head_dim = head_sizes(params)
    embed = int(params["embed_dim"])
    shapes: dict[str, tuple[int, ...]] = {}
    if params["layout"] == "packed":
        shapes["in_proj_weight"] = (3 * embed, embed)
        if params["qkv_bias"]:
            shapes["in_proj_bias"] = (3 * embed,)
        shapes["out_proj.weight"] = (embed, embed)
        if params["out_bias"]:
            shapes["out_proj.bias"] = (embed,)
        return shapes
    rows = {
        "q_proj": heads * head_dim,
        "k_proj": kv_heads * head_dim,
        "v_proj": kv_heads * head_dim,
    }
    for name, size in rows.items():
        shapes[f"{name}.weight"] = (size, embed)
        if params["qkv_bias"]:
            shapes[f"{name}.bias"] = (size,)
    shapes["o_proj.weight"] = (embed, heads * head_dim)
    if params["out_bias"]:
        shapes["o_proj.bias"] = (embed,)
    return shapes


def attention_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """What the tensors tell: the layout, ``embed_dim`` and the biases.

    The number of heads is in no tensor's shape: it comes from ``num_heads``
    (and ``num_kv_heads``, ``head_dim``), and a wrong one does not fit the
    key/value projections' rows.
    """
    if "in_proj_weight" in shapes:
        _, embed = shapes["in_proj_weight"]
        return {
            "layout": "packed",
            "embed_dim": embed,
            "num_kv_heads": 0,
            "head_dim": 0,
            "qkv_bias": "in_proj_bias" in shapes,
            "out_bias": "out_proj.bias" in shapes,
        }
    _, embed = shapes["q_proj.weight"]
    return {
        "layout": "separate",
        "embed_dim": embed,
        "qkv_bias": "q_proj.bias" in shapes,
        "out_bias": "o_proj.bias" in shapes,
    }


def attention_flops(params: Params, dims: Mapping[str, int]) -> int:
    """The projections' and the attention's multiply-adds, twice."""
    heads, kv_heads, head_dim = head_sizes(params)
    tokens = dims["batch"] * dims["seq"]
    embed = int(params["embed_dim"])
    projections = 2 * tokens * embed * head_dim * (2 * heads + 2 * kv_heads)
    keys = dims["past"] + dims["seq"]
    return projections + 4 * tokens * heads * keys * head_dim


def _build(params: Params) -> nn.Module:
    from layerport_attention.module import build_attention

    return build_attention(params)


def _reference(module: nn.Module) -> Callable[..., Any]:
    from layerport_attention.module import sdpa_reference

    return sdpa_reference(module)


ATTENTION = LayerSpec(
    name="attention",
    description="Multi-head attention (grouped-query, causal, rotary) with its KV cache in and out.",
    build=_build,
    weights=attention_weights,
    params=PARAMS,
    reference=_reference,
    flops=attention_flops,
    params_from_weights=attention_from_weights,
    **CACHED_LAYER,
)

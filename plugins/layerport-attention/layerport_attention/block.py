"""``decoder_block``: a pre-norm transformer block, Llama's, with the KV cache of ``attention``.

``y = h + mlp(post_attention_layernorm(h))``, ``h = x + self_attn(input_layernorm(x))``.
The weights load under Llama's key names (``self_attn.q_proj.weight``,
``mlp.gate_proj.weight``, ``input_layernorm.weight``...), and every size they
tell is read from them; the heads, as for ``attention``, are given. The inputs,
outputs and the decoding proof are ``attention``'s. Torch-free: ``module`` builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from layerport.plugin import LayerSpec, Param, Params, ParamValue
from layerport_attention.attention import (
    CACHED_LAYER,
    PARAMS,
    attention_flops,
    attention_weights,
)

if TYPE_CHECKING:
    from torch import nn

_LLAMA_BIASES = {"qkv_bias": False, "out_bias": False}

BLOCK_PARAMS = (
    *(
        Param(param.name, param.type, _LLAMA_BIASES[param.name], param.help)
        if param.name in _LLAMA_BIASES
        else param
        for param in PARAMS
        if param.name != "layout"
    ),
    Param("intermediate_size", int, 64, "the MLP's hidden features", minimum=1),
    Param(
        "mlp",
        str,
        "gated",
        "gated: down(silu(gate(x)) * up(x)); plain: down(silu(up(x)))",
        choices=("gated", "plain"),
    ),
    Param("mlp_bias", bool, False, "the MLP's projections have biases"),
    Param(
        "norm",
        str,
        "rmsnorm",
        "the two norms: rmsnorm (Llama's) or layernorm",
        choices=("rmsnorm", "layernorm"),
    ),
    Param("norm_eps", float, 1e-6, "added to the norms' mean square or variance", minimum=0.0),
    Param("norm_bias", bool, True, "a layernorm learns a shift too"),
)


def _attention_params(params: Params) -> dict[str, ParamValue]:
    return {**params, "layout": "separate"}


def block_weights(params: Params) -> dict[str, tuple[int, ...]]:
    """Llama's key names and shapes."""
    shapes = {
        f"self_attn.{name}": shape
        for name, shape in attention_weights(_attention_params(params)).items()
    }
    embed, inner = int(params["embed_dim"]), int(params["intermediate_size"])
    for norm in ("input_layernorm", "post_attention_layernorm"):
        shapes[f"{norm}.weight"] = (embed,)
        if params["norm"] == "layernorm" and params["norm_bias"]:
            shapes[f"{norm}.bias"] = (embed,)
    projections = {
        "gate_proj": (inner, embed),
        "up_proj": (inner, embed),
        "down_proj": (embed, inner),
    }
    if params["mlp"] == "plain":
        del projections["gate_proj"]
    for name, shape in projections.items():
        shapes[f"mlp.{name}.weight"] = shape
        if params["mlp_bias"]:
            shapes[f"mlp.{name}.bias"] = shape[:1]
    return shapes


def block_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """Every size the tensors tell; a norm with a bias is a LayerNorm (one without is taken
    for an RMSNorm: give ``norm=layernorm`` for a LayerNorm without bias)."""
    _, embed = shapes["self_attn.q_proj.weight"]
    inner, _ = shapes["mlp.up_proj.weight"]
    implied: dict[str, ParamValue] = {
        "embed_dim": embed,
        "intermediate_size": inner,
        "mlp": "gated" if "mlp.gate_proj.weight" in shapes else "plain",
        "mlp_bias": "mlp.up_proj.bias" in shapes,
        "qkv_bias": "self_attn.q_proj.bias" in shapes,
        "out_bias": "self_attn.o_proj.bias" in shapes,
    }
    if "input_layernorm.bias" in shapes:
        implied |= {"norm": "layernorm", "norm_bias": True}
    return implied


def _flops(params: Params, dims: Mapping[str, int]) -> int:
    matrices = 3 if params["mlp"] == "gated" else 2
    tokens = dims["batch"] * dims["seq"]
    mlp = 2 * tokens * matrices * int(params["embed_dim"]) * int(params["intermediate_size"])
    return attention_flops(_attention_params(params), dims) + mlp


def _build(params: Params) -> nn.Module:
    from layerport_attention.module import DecoderBlock

    return DecoderBlock(params)


DECODER_BLOCK = LayerSpec(
    name="decoder_block",
    description="A pre-norm transformer block (Llama's: RMSNorm, attention with its KV cache, gated SiLU MLP).",
    build=_build,
    weights=block_weights,
    params=BLOCK_PARAMS,
    flops=_flops,
    params_from_weights=block_from_weights,
    **CACHED_LAYER,
)

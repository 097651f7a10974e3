"""The fused form's torch side: the custom ops the modules call while they are exported
fused, and their translations for torch.onnx.

``layerport_attention::gqa`` is the attention after the packed projection:
rotary embeddings at positions ``past`` onwards, the cache grown, causal
attention with an additive mask, the heads merged, ``(batch, seq, heads *
head_dim)``. Its eager implementation is ``module.Attention``'s math, so a
fused module still runs; torch.onnx writes it as one placeholder node, which
``fused_graph.finish_fused`` turns into onnxruntime's ``GroupQueryAttention``.
``rms_norm`` and ``skip_norm`` (the residual sum and its norm) become its fused
norms the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from layerport_attention.fused_graph import (
    PLACEHOLDER,
    PLACEHOLDER_DOMAIN,
    RMS_NORM,
    SKIP_NORM,
    register_placeholders,
)


@torch.library.custom_op("layerport_attention::gqa", mutates_args=())
def gqa(
    qkv: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor | None,
    frequencies: torch.Tensor | None,
    sizes: list[int],
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal grouped-query attention of packed ``qkv`` ``(batch, seq, (heads + 2 kv_heads) *
    head_dim)`` over the cache; ``bias`` ``(batch, 1, seq, past + seq)`` (or ``None``) is
    added to the scores; ``frequencies`` ``(head_dim / 2,)``, float32, are the rotary
    embedding's (``module.rotary_frequencies``; ``None``: no rotation), the call's tokens
    at positions ``past`` onwards.

    ``sizes`` is ``[batch, seq, past]``, as the caller read them: exported, they are the
    graph's own symbolic sizes, which every block shares, so the operator's bookkeeping
    (lengths, and whether a call goes row by row) is computed once per model, not per block.
    """
    from layerport_attention.module import repeat_kv, rotate

    batch, seq, _ = qkv.shape
    past, head_dim = past_key.shape[2], past_key.shape[3]
    q, k, v = qkv.split(
        (num_heads * head_dim, kv_num_heads * head_dim, kv_num_heads * head_dim), dim=-1
    )
    q = q.view(batch, seq, num_heads, head_dim).transpose(1, 2)
    k = k.view(batch, seq, kv_num_heads, head_dim).transpose(1, 2)
    v = v.view(batch, seq, kv_num_heads, head_dim).transpose(1, 2)
    if frequencies is not None:
        positions = torch.arange(past, past + seq, dtype=frequencies.dtype)
        angles = positions[:, None] * frequencies[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(qkv.dtype), angles.sin().to(qkv.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    present_key = torch.cat((past_key, k), dim=2)
    present_value = torch.cat((past_value, v), dim=2)
    groups = num_heads // kv_num_heads
    scores = (q * scale) @ repeat_kv(present_key, groups).transpose(2, 3)
    if bias is not None:
        scores = scores + bias
    later = torch.ones(seq, past + seq, dtype=torch.bool).triu(past + 1)
    scores = scores.masked_fill(later, float("-inf"))
    attended = torch.softmax(scores, dim=-1) @ repeat_kv(present_value, groups)
    merged = attended.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)
    return merged, present_key, present_value


@gqa.register_fake
def _(
    qkv: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    bias: torch.Tensor | None,
    frequencies: torch.Tensor | None,
    sizes: list[int],
    num_heads: int,
    kv_num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, seq, _ = qkv.shape
    past, head_dim = past_key.shape[2], past_key.shape[3]
    grown = (batch, kv_num_heads, past + seq, head_dim)
    return (
        qkv.new_empty(batch, seq, num_heads * head_dim),
        past_key.new_empty(grown),
        past_value.new_empty(grown),
    )


@torch.library.custom_op("layerport_attention::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``nn.RMSNorm`` over the last dim."""
    return functional.rms_norm(x, (x.shape[-1],), weight, eps)


@rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("layerport_attention::skip_norm", mutates_args=())
def skip_norm(
    x: torch.Tensor,
    skip: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    simplified: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(norm(x + skip), x + skip)``: an RMSNorm if ``simplified``, else a LayerNorm."""
    summed = x + skip
    if simplified:
        return functional.rms_norm(summed, (x.shape[-1],), weight, eps), summed
    return functional.layer_norm(summed, (x.shape[-1],), weight, bias, eps), summed


@skip_norm.register_fake
def _(x: torch.Tensor, *_: object) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


def normed(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, through ``rms_norm`` for an ``nn.RMSNorm`` (a LayerNorm exports as ONNX's own)."""
    if isinstance(norm, nn.RMSNorm):
        return rms_norm(x, norm.weight, float(norm.eps or 0.0))
    return norm(x)


def skip_normed(
    norm: nn.Module, x: torch.Tensor, skip: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(norm(x + skip), x + skip)`` through ``skip_norm``."""
    assert isinstance(norm, (nn.RMSNorm, nn.LayerNorm))
    simplified = isinstance(norm, nn.RMSNorm)
    bias = None if simplified else norm.bias
    return skip_norm(x, skip, norm.weight, bias, float(norm.eps or 0.0), simplified)


def translations() -> Mapping[Any, Callable[..., Any]]:
    """torch.onnx's custom translations of the ops here: placeholder nodes (``fused_graph``)."""
    import onnxscript

    register_placeholders()
    placeholder = onnxscript.values.Opset(PLACEHOLDER_DOMAIN, 1)

    def gqa_onnx(
        qkv: Any,
        past_key: Any,
        past_value: Any,
        bias: Any,
        frequencies: Any,
        sizes: Any,
        num_heads: int,
        kv_num_heads: int,
        scale: float,
    ) -> Any:
        batch, seq, past = sizes
        return getattr(placeholder, PLACEHOLDER)(
            qkv,
            past_key,
            past_value,
            bias,
            frequencies,
            batch,
            seq,
            past,
            num_heads=num_heads,
            kv_num_heads=kv_num_heads,
            scale=scale,
        )

    def rms_norm_onnx(x: Any, weight: Any, eps: float) -> Any:
        return getattr(placeholder, RMS_NORM)(x, weight, epsilon=eps)

    def skip_norm_onnx(
        x: Any, skip: Any, weight: Any, bias: Any, eps: float, simplified: bool
    ) -> Any:
        return getattr(placeholder, SKIP_NORM)(
            x, skip, weight, bias, epsilon=eps, simplified=int(simplified)
        )

    return {
        torch.ops.layerport_attention.gqa.default: gqa_onnx,
        torch.ops.layerport_attention.rms_norm.default: rms_norm_onnx,
        torch.ops.layerport_attention.skip_norm.default: skip_norm_onnx,
    }

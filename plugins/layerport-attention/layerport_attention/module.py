"""The attention module (torch), and an independent reference through torch's fused kernel.

Semantics are transformers' Llama attention with its ``DynamicCache``: the
call's tokens sit at positions ``past`` onwards, keys are rotated before they
are cached, each key/value head serves ``num_heads // num_kv_heads`` query
heads (``repeat_kv``). A query with no key to attend to (all padding) outputs
zeros before the output projection, not NaN, so a stream and the whole pass
agree on it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from layerport.plugin import Params, export_form
from layerport_attention.attention import FUSED, head_sizes


class Attention(nn.Module):
    """Multi-head attention over ``x`` and the cache: ``(y, present_key, present_value,
    present_padding)``; shapes as the spec declares them."""

    def __init__(self, params: Params) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = head_sizes(params)
        self.embed_dim = int(params["embed_dim"])
        self.packed = params["layout"] == "packed"
        self.causal = bool(params["causal"])
        self.rotary = bool(params["rotary"])
        self.rope_base = float(params["rope_base"])
        inner, kv_inner = self.heads * self.head_dim, self.kv_heads * self.head_dim
        qkv_bias, out_bias = bool(params["qkv_bias"]), bool(params["out_bias"])
        if self.packed:
            # nn.MultiheadAttention's names, so its state dict loads as it is.
            self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, self.embed_dim))
            self.in_proj_bias = nn.Parameter(torch.empty(3 * inner)) if qkv_bias else None
            self.out_proj = nn.Linear(inner, self.embed_dim, bias=out_bias)
            nn.init.xavier_uniform_(self.in_proj_weight)
            if self.in_proj_bias is not None:
                nn.init.uniform_(self.in_proj_bias, -0.5, 0.5)
        else:
            self.q_proj = nn.Linear(self.embed_dim, inner, bias=qkv_bias)
            self.k_proj = nn.Linear(self.embed_dim, kv_inner, bias=qkv_bias)
            self.v_proj = nn.Linear(self.embed_dim, kv_inner, bias=qkv_bias)
            self.o_proj = nn.Linear(inner, self.embed_dim, bias=out_bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(batch, heads, seq, head_dim)``, keys and values ``(batch, kv_heads, ...)``."""
        if self.packed:
            q, k, v = functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        batch, seq = x.shape[0], x.shape[1]
        return (
            q.view(batch, seq, self.heads, self.head_dim).transpose(1, 2),
            k.view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2),
            v.view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2),
        )

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        """``(batch, heads, seq, head_dim)`` -> ``(batch, seq, embed_dim)``, through the output
        projection."""
        batch, _, seq, _ = attended.shape
        merged = attended.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim)
        return self.project_out(merged)

    def project_out(self, merged: torch.Tensor) -> torch.Tensor:
        """The output projection of the merged heads, ``(batch, seq, heads * head_dim)``."""
        return self.out_proj(merged) if self.packed else self.o_proj(merged)

    def positions(self, past: int, seq: int) -> torch.Tensor:
        """The call's tokens' positions: ``past`` onwards, for the rotary angles and the mask."""
        return torch.arange(seq) + past

    def forward(
        self,
        x: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        past_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if export_form() == FUSED.name:
            return self.fused(x, past_key, past_value, padding_mask, past_padding)
        seq, past = x.shape[1], past_key.shape[2]
        q, k, v = self.project(x)
        if self.rotary:
            positions = self.positions(past, seq)
            cos, sin = rotary_tables(positions, self.head_dim, self.rope_base, x.dtype)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        present_key = torch.cat((past_key, k), dim=2)
        present_value = torch.cat((past_value, v), dim=2)
        present_padding = grown_padding(x, past, padding_mask, past_padding)
        allowed = ~present_padding[:, None, None, :]
        if self.causal:
            keys = torch.arange(past + seq)
            allowed = allowed & (keys[None, :] <= self.positions(past, seq)[:, None])
        groups = self.heads // self.kv_heads
        # Scaled before the product, so float16 scores do not overflow; a tensor, because
        # torch.onnx rounds a Python number to float32 (a float64 file was off by 1e-8).
        scale = torch.tensor(self.head_dim**-0.5, dtype=q.dtype)
        scores = (q * scale) @ repeat_kv(present_key, groups).transpose(2, 3)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        # A query with nothing to attend to gets zeros, not a uniform average or NaN.
        weights = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
        attended = weights @ repeat_kv(present_value, groups)
        return self.output(attended), present_key, present_value, present_padding

    def fused(
        self,
        x: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        padding_mask: torch.Tensor | None,
        past_padding: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` in the fused form: Q, K and V in one MatMul, then ``fused.gqa``, which
        the export writes as onnxruntime's ``GroupQueryAttention``."""
        from layerport_attention.fused import gqa

        seq, past = x.shape[1], past_key.shape[2]
        weight: torch.Tensor
        bias: torch.Tensor | None
        if self.packed:
            weight, bias = self.in_proj_weight, self.in_proj_bias
        else:
            projections = (self.q_proj, self.k_proj, self.v_proj)
            weight = torch.cat([projection.weight for projection in projections])
            biases = [projection.bias for projection in projections]
            bias = None if biases[0] is None else torch.cat(biases)  # type: ignore[arg-type]
        present_padding = grown_padding(x, past, padding_mask, past_padding)
        # Padding as an additive mask over the keys; the causal mask is the operator's own.
        # A call without padding inputs (a model file's decoder) passes no mask at all: the
        # operator then takes its fastest path, and the graph keeps no padding arithmetic.
        padded = padding_mask is not None or past_padding is not None
        additive = None
        if padded:
            lowest = torch.tensor(torch.finfo(x.dtype).min, dtype=x.dtype)
            additive = torch.where(present_padding, lowest, torch.zeros((), dtype=x.dtype))
            additive = additive[:, None, None, :].expand(x.shape[0], 1, seq, past + seq)
        # The operator rotates by tables that onnxruntime computes once, when it opens the
        # file (finish_fused): the call passes only the angles' frequencies.
        frequencies = rotary_frequencies(self.head_dim, self.rope_base) if self.rotary else None
        merged, present_key, present_value = gqa(
            functional.linear(x, weight, bias),
            past_key,
            past_value,
            additive,
            frequencies,
            [x.shape[0], seq, past],
            self.heads,
            self.kv_heads,
            self.head_dim**-0.5,
        )
        if padded:
            # A query whose keys are all padding gets zeros, as in forward, not the operator's
            # average (or NaN): it is one whose count of unpadded keys up to it is 0.
            unpadded = (~present_padding).to(torch.int64).cumsum(dim=1)[:, past:]
            merged = merged.masked_fill((unpadded == 0)[..., None], 0.0)
        return self.project_out(merged), present_key, present_value, present_padding


def grown_padding(
    x: torch.Tensor,
    past: int,
    padding_mask: torch.Tensor | None,
    past_padding: torch.Tensor | None,
) -> torch.Tensor:
    """``present_padding``, ``(batch, past + seq)``: the cache's padding, then the call's
    (none where omitted)."""
    batch, seq = x.shape[0], x.shape[1]
    if padding_mask is None:
        padding_mask = torch.zeros(batch, seq, dtype=torch.bool)
    if past_padding is None:
        past_padding = torch.zeros(batch, past, dtype=torch.bool)
    return torch.cat((past_padding, padding_mask), dim=1)


def rotary_tables(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's ``cos`` and ``sin`` at ``positions``, ``(seq, head_dim)``, computed in float32
    (float64 for a float64 layer) and then cast, as transformers does."""
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    inverse = rotary_frequencies(head_dim, base, wide).to(positions.device)
    angles = positions.to(wide)[:, None] * inverse[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotary_frequencies(
    head_dim: int, base: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Llama's inverse frequencies, ``base ** -(2i / head_dim)``, ``(head_dim / 2,)``: a
    position's angles are the position times these."""
    exponents = torch.arange(0, head_dim, 2, dtype=dtype) / head_dim
    return 1.0 / (torch.tensor(base, dtype=dtype) ** exponents)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding by halves (Llama's ``rotate_half``), not interleaved pairs."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def repeat_kv(state: torch.Tensor, groups: int) -> torch.Tensor:
    """``(batch, kv_heads, length, head_dim)`` -> ``(batch, kv_heads * groups, ...)``: query
    head ``h`` reads key/value head ``h // groups``."""
    if groups == 1:
        return state
    batch, kv_heads, length, head_dim = state.shape
    expanded = state[:, :, None].expand(batch, kv_heads, groups, length, head_dim)
    return expanded.reshape(batch, kv_heads * groups, length, head_dim)


def build_attention(params: Params) -> nn.Module:
    return Attention(params)


def sdpa_reference(module: Any) -> Callable[..., Any]:
    """The same attention through ``scaled_dot_product_attention``, with ``enable_gqa``."""

    def reference(
        x: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        past_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        batch, seq, past = x.shape[0], x.shape[1], past_key.shape[2]
        q, k, v = module.project(x)
        if module.rotary:
            positions = torch.arange(past, past + seq)
            cos, sin = rotary_tables(positions, module.head_dim, module.rope_base, x.dtype)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        keys, values = torch.cat((past_key, k), dim=2), torch.cat((past_value, v), dim=2)
        padding = torch.cat(
            (
                torch.zeros(batch, past, dtype=torch.bool)
                if past_padding is None
                else past_padding,
                torch.zeros(batch, seq, dtype=torch.bool) if padding_mask is None else padding_mask,
            ),
            dim=1,
        )
        allowed = ~padding[:, None, None, :]
        if module.causal:
            allowed = allowed & torch.ones(seq, past + seq, dtype=torch.bool).tril(past)
        attended = functional.scaled_dot_product_attention(
            q, keys, values, allowed, enable_gqa=True
        )
        attended = attended.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
        return module.output(attended), keys, values, padding

    return reference


class MLP(nn.Module):
    """Llama's gated SiLU MLP, ``down(silu(gate(x)) * up(x))``, or a plain ``down(silu(up(x)))``."""

    def __init__(self, params: Params) -> None:
        super().__init__()
        embed, inner, bias = (
            int(params["embed_dim"]),
            int(params["intermediate_size"]),
            bool(params["mlp_bias"]),
        )
        self.gated = params["mlp"] == "gated"
        if self.gated:
            self.gate_proj = nn.Linear(embed, inner, bias=bias)
        self.up_proj = nn.Linear(embed, inner, bias=bias)
        self.down_proj = nn.Linear(inner, embed, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated and export_form() == FUSED.name:
            return self.packed(x)
        up = self.up_proj(x)
        hidden = functional.silu(self.gate_proj(x)) * up if self.gated else functional.silu(up)
        return self.down_proj(hidden)

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with the gate and up projections in one MatMul (the fused form's): one
        pass over ``x`` and one kernel call, where a decode step is mostly call overhead."""
        weight = torch.cat((self.gate_proj.weight, self.up_proj.weight))
        biases = (self.gate_proj.bias, self.up_proj.bias)
        bias = None if biases[0] is None else torch.cat(biases)
        gate, up = functional.linear(x, weight, bias).chunk(2, dim=-1)
        return self.down_proj(functional.silu(gate) * up)


class DecoderBlock(nn.Module):
    """``h = x + self_attn(input_layernorm(x))``, ``y = h + mlp(post_attention_layernorm(h))``,
    with the attention's cache in and out; Llama's module names."""

    def __init__(self, params: Params) -> None:
        super().__init__()
        self.self_attn = Attention({**params, "layout": "separate"})
        self.input_layernorm = _norm(params)
        self.post_attention_layernorm = _norm(params)
        self.mlp = MLP(params)

    def forward(
        self,
        x: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        past_padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # Named, not *args: torch.export matches the inputs' dynamic shapes by position.
        cache = (past_key, past_value, padding_mask, past_padding)
        if export_form() == FUSED.name:
            from layerport_attention.fused import normed, skip_normed

            # The residual sum and the second norm in one operator (SkipSimplifiedLayerNormalization).
            attended, key, value, padding = self.self_attn(normed(self.input_layernorm, x), *cache)
            post, hidden = skip_normed(self.post_attention_layernorm, attended, x)
            return hidden + self.mlp(post), key, value, padding
        attended, key, value, padding = self.self_attn(self.input_layernorm(x), *cache)
        hidden = x + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden)), key, value, padding


def _norm(params: Params) -> nn.Module:
    """An RMSNorm or a LayerNorm over the features, its seeded scale (and shift) scattered
    around 1 (and 0), so a scale read as a shift cannot verify."""
    embed, eps = int(params["embed_dim"]), float(params["norm_eps"])
    norm: nn.Module
    if params["norm"] == "rmsnorm":
        norm = nn.RMSNorm(embed, eps=eps)
    else:
        norm = nn.LayerNorm(embed, eps=eps, bias=bool(params["norm_bias"]))
    with torch.no_grad():
        for name, center in (("weight", 1.0), ("bias", 0.0)):
            tensor = getattr(norm, name, None)
            if tensor is not None:
                tensor.uniform_(center - 0.5, center + 0.5)
    return norm

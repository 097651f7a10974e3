"""``attention`` against torch's own attention, and its KV cache proved by decoding.

The oracles are independent of the layer's code: ``nn.MultiheadAttention``
holding the same weights, and ``scaled_dot_product_attention`` with rotary
embeddings written here as complex rotations. The files run in onnxruntime at
sizes never traced. Broken layers (a pinned cache, a causal mask or rotary
offset that ignores the past) must fail the decoding proof, naming the step.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from layerport_attention import ATTENTION, SPECS
from layerport_attention.module import Attention, rotary_tables, rotate
from torch import nn
from torch.nn import functional

from layerport.plugin import (
    CHECKS,
    UserInputError,
    export_layer,
    get_registry,
    load_model,
    resolve_config,
)
from layerport.plugin import cli as layerport_cli


def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(layerport_cli, list(args))


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("layer", [spec.name for spec in SPECS])
def test_conformance(check: Callable[[str], None], layer: str) -> None:
    check(layer)


def _randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every tensor random, biases included, so no zeros hide a mixed-up weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            tensor.copy_(torch.rand(tensor.shape, generator=generator) - 0.5)
    return module.eval()


def _export(tmp_path: Path, state: dict[str, torch.Tensor], *flags: str) -> Path:
    checkpoint, path = tmp_path / "attention.pt", tmp_path / "attention.onnx"
    torch.save(state, checkpoint)
    result = _cli("export", "attention", "--weights", str(checkpoint), *flags, "-o", str(path))
    assert result.exit_code == 0, result.output
    return path


def _normal(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _empty_cache(batch: int, heads: int, head_dim: int) -> np.ndarray:
    return np.zeros((batch, heads, 0, head_dim), np.float32)


def test_packed_weights_match_nn_multihead_attention(tmp_path: Path) -> None:
    """``in_proj_weight`` and ``out_proj``, read with no size but the heads; a padding mask."""
    oracle = _randomized(nn.MultiheadAttention(24, 3, batch_first=True))
    path = _export(
        tmp_path,
        oracle.state_dict(),
        "-p",
        "num_heads=3",
        "-p",
        "causal=false",
        "-p",
        "rotary=false",
    )
    params = json.loads(_cli("inspect", str(path), "--json").output)["layerport"]["params"]
    assert params["layout"] == "packed" and params["embed_dim"] == 24
    x = _normal(3, 29, 24)
    padding = np.zeros((3, 29), bool)
    padding[1, 20:] = True  # a shorter second sequence
    padding[2, :5] = True
    got = load_model(path).run(
        {
            "x": x,
            "past_key": _empty_cache(3, 3, 8),
            "past_value": _empty_cache(3, 3, 8),
            "padding_mask": padding,
        }
    )
    with torch.no_grad():
        expected, _ = oracle(
            *(torch.from_numpy(x),) * 3, key_padding_mask=torch.from_numpy(padding)
        )
    np.testing.assert_allclose(got["y"], expected.numpy(), atol=3e-6)
    assert got["present_key"].shape == (3, 3, 29, 8)
    np.testing.assert_array_equal(got["present_padding"], padding)


def _complex_rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding as a complex rotation of (first half, second half) pairs."""
    half = x.shape[-1] // 2
    frequencies = base ** (-torch.arange(half, dtype=torch.float64) / half)
    turns = torch.polar(
        torch.ones(len(positions), half, dtype=torch.float64), positions[:, None] * frequencies
    )
    pairs = torch.complex(x[..., :half].double(), x[..., half:].double()) * turns
    return torch.cat((pairs.real, pairs.imag), dim=-1).to(x.dtype)


def _sdpa_oracle(
    weights: dict[str, torch.Tensor],
    heads: int,
    kv_heads: int,
    base: float,
    x: np.ndarray,
    past_key: np.ndarray,
    past_value: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Llama attention with a cache, from torch's primitives: (y, present_key)."""

    def project(name: str, count: int) -> torch.Tensor:
        out = functional.linear(
            torch.from_numpy(x), weights[f"{name}.weight"], weights.get(f"{name}.bias")
        )
        return out.view(x.shape[0], x.shape[1], count, -1).transpose(1, 2)

    past = past_key.shape[2]
    positions = torch.arange(past, past + x.shape[1], dtype=torch.float64)
    q = _complex_rotary(project("q_proj", heads), positions, base)
    k = _complex_rotary(project("k_proj", kv_heads), positions, base)
    keys = torch.cat((torch.from_numpy(past_key), k), dim=2)
    values = torch.cat((torch.from_numpy(past_value), project("v_proj", kv_heads)), dim=2)
    mask = torch.ones(x.shape[1], keys.shape[2], dtype=torch.bool).tril(past)
    out = functional.scaled_dot_product_attention(q, keys, values, mask, enable_gqa=True)
    merged = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    y = functional.linear(merged, weights["o_proj.weight"], weights.get("o_proj.bias"))
    return y.numpy(), keys.numpy()


@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no-biases"])
def test_separate_projections_match_sdpa_with_rotary_and_grouped_heads(
    tmp_path: Path, biases: bool
) -> None:
    """Llama's names, 8 query heads over 2 key/value heads, rotary base 500, a cache of 13."""
    embed, heads, kv_heads, head_dim = 32, 8, 2, 4
    torch.manual_seed(0)
    weights = {
        name: torch.rand(rows, columns) - 0.5
        for name, rows, columns in (
            ("q_proj.weight", heads * head_dim, embed),
            ("k_proj.weight", kv_heads * head_dim, embed),
            ("v_proj.weight", kv_heads * head_dim, embed),
            ("o_proj.weight", embed, heads * head_dim),
        )
    }
    if biases:
        weights |= {
            name.replace("weight", "bias"): torch.rand(tensor.shape[0]) - 0.5
            for name, tensor in weights.items()
        }
    path = _export(
        tmp_path, weights, "-p", "num_heads=8", "-p", "num_kv_heads=2", "-p", "rope_base=500"
    )
    x, past_key, past_value = (
        _normal(2, 11, embed),
        _normal(2, 2, 13, 4, seed=2),
        _normal(2, 2, 13, 4, seed=3),
    )
    got = load_model(path).run({"x": x, "past_key": past_key, "past_value": past_value})
    y, present_key = _sdpa_oracle(weights, heads, kv_heads, 500.0, x, past_key, past_value)
    # float32 sums in another order: a few ulps of outputs near 2 (ulp 2.4e-7).
    np.testing.assert_allclose(got["y"], y, atol=1e-5)
    np.testing.assert_allclose(got["present_key"], present_key, atol=1e-5)


def test_the_reference_matches_the_module() -> None:
    config = resolve_config(get_registry(), "attention", {"num_heads": 4, "num_kv_heads": 1})
    module = _randomized(Attention(config.params))
    inputs = {
        name: torch.from_numpy(array)
        for name, array in config.random_inputs(include_optional=True).items()
    }
    assert ATTENTION.reference is not None
    with torch.no_grad():
        for got, expected in zip(
            ATTENTION.reference(module)(**inputs), module(**inputs), strict=True
        ):
            torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_decoding_is_proved_in_each_precision(dtype: str) -> None:
    config = resolve_config(get_registry(), "attention", {"num_kv_heads": 1}, dtype=dtype)
    report = export_layer(config, trials=1).report
    assert report is not None and report.passed
    assert (
        report.streaming
        == "decoding: prompt 1, 8, 21 then 1, 21 single-token steps, through the past state"
    )
    decoding = [c for c in report.comparisons if c.case.startswith("decoding")]
    assert len(decoding) == 3 * 3 * 2 * 4  # batch x prompt x steps x outputs
    assert {c.case for c in decoding} >= {"decoding batch=9 prompt=21 steps=21"}


class _PinnedCache(Attention):
    """Attends to the last 10 cached tokens only, a window pinned to a length: right until
    the cache outgrows it. The cache it returns has every token."""

    def forward(self, x, past_key, past_value, padding_mask=None, past_padding=None):  # type: ignore[no-untyped-def, override]
        batch, past = x.shape[0], past_key.shape[2]
        # Masked as padding, not sliced, so the cache it returns keeps the spec's shape.
        given = _padding(past_padding, batch, past)
        dropped = given | (torch.arange(past) < past - 10)[None, :]
        y, key, value, padding = super().forward(x, past_key, past_value, padding_mask, dropped)
        return y, key, value, torch.cat((given, padding[:, past:]), dim=1)


def _padding(mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    return torch.zeros(batch, length, dtype=torch.bool) if mask is None else mask


class _MaskIgnoresThePast(Attention):
    """Compares key index with the call's own query index: at a decode step, each token
    sees only the cache's first token."""

    def forward(self, x, past_key, past_value, padding_mask=None, past_padding=None):  # type: ignore[no-untyped-def, override]
        rotary_positions = self.positions
        self.positions = lambda past, seq: torch.arange(seq)  # type: ignore[method-assign]
        try:
            # The rotary angles stay right: only the mask is wrong.
            if self.rotary:
                raise AssertionError("tested with rotary=false")
            return super().forward(x, past_key, past_value, padding_mask, past_padding)
        finally:
            self.positions = rotary_positions  # type: ignore[method-assign]


class _RotaryFromZero(Attention):
    """Rotates each call's tokens from position 0, not from ``past`` onwards."""

    def forward(self, x, past_key, past_value, padding_mask=None, past_padding=None):  # type: ignore[no-untyped-def, override]
        seq, past = x.shape[1], past_key.shape[2]
        q, k, v = self.project(x)
        cos, sin = rotary_tables(torch.arange(seq), self.head_dim, self.rope_base, x.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        keys, values = torch.cat((past_key, k), dim=2), torch.cat((past_value, v), dim=2)
        padding = torch.cat(
            (_padding(past_padding, x.shape[0], past), _padding(padding_mask, x.shape[0], seq)), 1
        )
        allowed = torch.ones(seq, past + seq, dtype=torch.bool).tril(past) & ~padding[:, None, None]
        groups = self.heads // self.kv_heads
        attended = functional.scaled_dot_product_attention(
            q, keys, values, allowed, enable_gqa=groups > 1
        )
        attended = attended.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
        return self.output(attended), keys, values, padding


@pytest.mark.parametrize(
    ("broken", "first"),
    # The window of 10 is first outgrown at position 11 (a cache of 11 tokens); the mask
    # and the rotary offset go wrong at the first token after a cached one.
    [(_PinnedCache, 11), (_MaskIgnoresThePast, 1), (_RotaryFromZero, 1)],
    ids=["pinned-cache", "causal-mask", "rotary-offset"],
)
def test_a_broken_cache_fails_decoding_naming_the_step(broken: type[Attention], first: int) -> None:
    """Each bug agrees with eager at every single call; only the stream shows it."""
    params = {"rotary": broken is not _MaskIgnoresThePast}
    config = resolve_config(get_registry(), "attention", params)
    spec = dataclasses.replace(config.spec, build=broken)
    config = dataclasses.replace(config, layer=dataclasses.replace(config.layer, spec=spec))
    with pytest.raises(Exception) as failed:  # the class is checked by name
        export_layer(config, trials=1)
    assert type(failed.value).__name__ == "VerificationFailed"
    report = failed.value.report  # type: ignore[attr-defined]
    decoding = [c for c in report.failures if c.case.startswith("decoding")]
    assert decoding and len(decoding) == len(report.failures), "only the stream fails"
    located = [
        re.search(
            r"prompt=(\d+) steps=\d+, first wrong at decode step (\d+) \(position (\d+)\)", c.case
        )
        for c in decoding
    ]
    assert all(located), [c.case for c in decoding]
    positions = {int(match[3]) for match in located if match}
    assert min(positions) == first
    # The step is counted from the prompt's end.
    assert all(int(m[3]) - int(m[1]) + 1 == int(m[2]) for m in located if m)
    assert re.search(r"first wrong at decode step \d+ \(position \d+\)", str(failed.value))


def test_a_cache_that_disagrees_with_the_weights_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "attention.onnx"
    exported = _cli("export", "attention", "-p", "num_kv_heads=2", "--trials", "1", "-o", str(path))
    assert exported.exit_code == 0, exported.output
    arrays = {
        "x": _normal(1, 3, 32),
        "past_key": _normal(1, 2, 5, 8),
        "past_value": _normal(1, 2, 5, 8),
    }
    for name, shape, message in (
        ("past_key", (1, 4, 5, 8), "input past_key axis 1 must be 2, got 4"),
        ("past_value", (1, 2, 5, 16), "input past_value axis 3 must be 8, got 16"),
        ("past_value", (1, 2, 4, 8), "dim past is 5 in input past_key but 4 in input past_value"),
    ):
        inputs = {**arrays, name: np.zeros(shape, np.float32)}
        files = []
        for key, array in inputs.items():
            np.save(tmp_path / f"{key}.npy", array)
            files += ["--input", f"{key}={tmp_path / key}.npy"]
        result = subprocess.run(
            [sys.executable, "-m", "layerport", "infer", str(path), *files],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"Error: {message}\n"


def test_key_value_heads_that_do_not_fit_the_projections_exit_2(tmp_path: Path) -> None:
    """Two key/value heads' rows, read as four (num_kv_heads defaults to num_heads)."""
    weights = {
        "q_proj.weight": torch.zeros(32, 32),
        "k_proj.weight": torch.zeros(16, 32),
        "v_proj.weight": torch.zeros(16, 32),
        "o_proj.weight": torch.zeros(32, 32),
    }
    torch.save(weights, tmp_path / "model.pt")
    result = subprocess.run(
        [sys.executable, "-m", "layerport", "export", "attention", "--weights", "model.pt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "Error: weights in model.pt do not fit the layer: k_proj.weight has shape (16, 32), "
        "expected (32, 32); v_proj.weight has shape (16, 32), expected (32, 32)\n"
    )
    assert not list(tmp_path.rglob("*.onnx"))


def test_an_empty_cache_runs_through_infer(tmp_path: Path) -> None:
    path = tmp_path / "attention.onnx"
    exported = _cli("export", "attention", "-p", "num_kv_heads=2", "--trials", "1", "-o", str(path))
    assert exported.exit_code == 0, exported.output
    session = load_model(path)
    empty = np.zeros((2, 2, 0, 8), np.float32)
    got = session.run({"x": _normal(2, 5, 32), "past_key": empty, "past_value": empty})
    assert got["present_key"].shape == (2, 2, 5, 8) and got["present_padding"].shape == (2, 5)


def test_inconsistent_heads_are_refused() -> None:
    with pytest.raises(UserInputError, match="num_heads=4 must be a multiple of num_kv_heads=3"):
        resolve_config(get_registry(), "attention", {"num_kv_heads": 3}).weight_shapes()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_decoding_long_prompts_and_many_steps(dtype: str) -> None:
    """Prompts 1, 150 and 305, each followed by 1 and 305 single-token steps."""
    config = resolve_config(
        get_registry(), "attention", {"num_kv_heads": 1}, dims={"batch": 2, "seq": 150}, dtype=dtype
    )
    report = export_layer(config, trials=1).report
    assert report is not None and report.passed, report.failure_message() if report else ""
    assert (
        report.streaming
        == "decoding: prompt 1, 150, 305 then 1, 305 single-token steps, through the past state"
    )


def _llama_block(
    weights: dict[str, torch.Tensor],
    heads: int,
    kv_heads: int,
    eps: float,
    gated: bool,
    layernorm: bool,
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A pre-norm block written with torch's primitives, its attention ``_sdpa_oracle``."""

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        if layernorm:
            return functional.layer_norm(
                x, x.shape[-1:], weights[f"{name}.weight"], weights.get(f"{name}.bias"), eps
            )
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weights[f"{name}.weight"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return functional.linear(x, weights[f"mlp.{name}.weight"], weights.get(f"mlp.{name}.bias"))

    attention = {
        name.removeprefix("self_attn."): tensor
        for name, tensor in weights.items()
        if name.startswith("self_attn.")
    }

    def block(
        x: np.ndarray, past_key: np.ndarray, past_value: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        normed = norm(torch.from_numpy(x), "input_layernorm").numpy()
        attended, keys = _sdpa_oracle(
            attention, heads, kv_heads, 10000.0, normed, past_key, past_value
        )
        hidden = torch.from_numpy(x + attended)
        inner = norm(hidden, "post_attention_layernorm")
        up = linear(inner, "up_proj")
        activated = (
            functional.silu(linear(inner, "gate_proj")) * up if gated else functional.silu(up)
        )
        return (hidden + linear(activated, "down_proj")).numpy(), keys

    return block


@pytest.mark.parametrize(
    ("gated", "layernorm", "biases"),
    [(True, False, False), (False, True, True)],
    ids=["llama", "layernorm-plain-mlp-biases"],
)
def test_decoder_block_reads_llama_keys_and_matches_a_torch_block(
    tmp_path: Path, gated: bool, layernorm: bool, biases: bool
) -> None:
    """From a whole-model checkpoint's ``model.layers.1.``: every size from the tensors, the
    heads given; run at sizes never traced, with a cache of 9."""
    embed, heads, kv_heads, head_dim, inner = 48, 6, 2, 8, 80
    generator = torch.Generator().manual_seed(3)
    shapes = {
        "self_attn.q_proj.weight": (heads * head_dim, embed),
        "self_attn.k_proj.weight": (kv_heads * head_dim, embed),
        "self_attn.v_proj.weight": (kv_heads * head_dim, embed),
        "self_attn.o_proj.weight": (embed, heads * head_dim),
        "mlp.up_proj.weight": (inner, embed),
        "mlp.down_proj.weight": (embed, inner),
    }
    if gated:
        shapes["mlp.gate_proj.weight"] = (inner, embed)
    if biases:
        shapes |= {name.replace("weight", "bias"): shape[:1] for name, shape in shapes.items()}
    weights = {
        name: (torch.rand(shape, generator=generator) - 0.5) * 0.4 for name, shape in shapes.items()
    }
    for norm in ("input_layernorm", "post_attention_layernorm"):
        weights[f"{norm}.weight"] = torch.rand(embed, generator=generator) + 0.5
        if layernorm:
            weights[f"{norm}.bias"] = torch.rand(embed, generator=generator) - 0.5
    checkpoint = {f"model.layers.1.{name}": tensor for name, tensor in weights.items()}
    checkpoint["model.embed_tokens.weight"] = torch.zeros(10, embed)  # another layer's
    torch.save(checkpoint, tmp_path / "model.pt")
    path = tmp_path / "block.onnx"
    result = _cli(
        "export", "decoder_block", "--weights", str(tmp_path / "model.pt"),
        "--weights-prefix", "model.layers.1.", "-p", "num_heads=6", "-p", "num_kv_heads=2",
        "-p", "norm_eps=0.00001", "--trials", "1", "-o", str(path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = json.loads(_cli("inspect", str(path), "--json").output)["layerport"]["params"]
    assert (params["embed_dim"], params["intermediate_size"]) == (embed, inner)
    assert params["mlp"] == ("gated" if gated else "plain")
    assert params["norm"] == ("layernorm" if layernorm else "rmsnorm")
    x, past_key, past_value = (
        _normal(2, 13, embed),
        _normal(2, 2, 9, 8, seed=2),
        _normal(2, 2, 9, 8, seed=3),
    )
    got = load_model(path).run({"x": x, "past_key": past_key, "past_value": past_value})
    oracle = _llama_block(weights, heads, kv_heads, 1e-5, gated, layernorm)
    y, present_key = oracle(x, past_key, past_value)
    np.testing.assert_allclose(got["y"], y, atol=1e-5)
    np.testing.assert_allclose(got["present_key"], present_key, atol=2e-6)

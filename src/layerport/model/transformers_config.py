"""What a transformers checkpoint's ``config.json`` tells that its tensors do not.

A checkpoint saved by transformers' ``save_pretrained`` sits beside a
``config.json`` that holds what no tensor's shape can: the attention heads, the
norms' epsilon, the rotary base, the trained positions, whether the head shares
the embedding's table. ``layerport draft`` reads it, when it is there, so that a
Llama checkpoint drafts as the model it is (``decoder_block``\\ s with their
heads) and not as loose projections. The file only informs a draft: every value
is written into the model file, where a person sees it, and what layerport's
layers cannot compute as the config says is a ``CHECK``.

Key names are transformers' ``PretrainedConfig`` and ``LlamaConfig`` attributes
(transformers 4.x writes ``rope_theta`` and ``rope_scaling``; 5.x writes both
under ``rope_parameters``). Torch-free, and never imports transformers.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerport.errors import BadFile
from layerport.spec import ParamValue

CONFIG_NAME = "config.json"

# A transformers config is a few KiB; a larger "config.json" is something else.
_MOST_BYTES = 1 << 20

# transformers' name -> the layerport parameters that mean the same, in any layer that has them.
_PARAMS: dict[str, tuple[str, ...]] = {
    "num_attention_heads": ("num_heads",),
    "num_key_value_heads": ("num_kv_heads",),
    "head_dim": ("head_dim",),
    "rms_norm_eps": ("norm_eps", "eps"),
}

# Families whose decoder layer is Llama's once the tensors' names and shapes fit
# (Qwen2's query/key/value biases show in its tensors).
_LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2"})
_SILU = frozenset({"silu", "swish"})

# transformers' module names whose layer a causal LM's config settles, where several fit
# their tensors (an embedding's table is also a linear's weight).
_LANGUAGE_MODEL_MODULES = {"embed_tokens": "embedding", "lm_head": "linear"}
_RMS_NORMS = ("norm", "input_layernorm", "post_attention_layernorm")


@dataclass(frozen=True)
class TransformersConfig:
    """The parts of a transformers ``config.json`` a model file needs.

    ``params`` are keyed by layerport's parameter names (``num_heads``,
    ``num_kv_heads``, ``head_dim``, ``norm_eps``, ``eps``, ``rope_base``);
    ``checks`` say, one line each, where the config asks for what layerport's
    layers do not compute (a scaled rotary, a sliding window, another activation).
    ``modules`` maps a transformers module's name (``embed_tokens``) to the
    layerport layer that computes it (``embedding``).
    """

    model_type: str
    params: dict[str, ParamValue]
    max_positions: int | None
    causal_lm: bool  # an ``...ForCausalLM``: its head (``lm_head``) runs last
    tied_embeddings: bool | None  # None where the file does not say
    checks: tuple[str, ...]
    modules: dict[str, str]

    def module_layer(self, prefix: str) -> str | None:
        """The layer that computes the module under ``prefix`` (``model.embed_tokens.`` ->
        ``embedding``), where the config settles it, else None."""
        return self.modules.get(prefix.rstrip(".").rpartition(".")[2])


def read_transformers_config(checkpoint: Path) -> TransformersConfig | None:
    """The ``config.json`` beside ``checkpoint``, or None where there is none or it is not
    transformers' (no ``model_type``).

    Raises ``BadFile`` for a ``config.json`` that cannot be read (a dangling link,
    not a regular file, over 1 MiB, not JSON), and for one whose values are not of
    the type transformers gives them (heads ``"8"``, an epsilon of 0), which
    transformers refuses too.
    """
    path = checkpoint.parent / CONFIG_NAME
    if not os.path.lexists(path):
        return None
    config = _read_json(path)
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        return None
    return _parse(config, path)


def _read_json(path: Path) -> Any:
    try:
        # O_NONBLOCK: a FIFO named config.json must not hang the draft before fstat refuses it.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise BadFile(f"cannot read {path}: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise BadFile(f"{path} is not a regular file")
        if status.st_size > _MOST_BYTES:
            raise BadFile(f"{path} is {status.st_size} bytes: a transformers config is under 1 MiB")
        data = os.read(descriptor, _MOST_BYTES + 1)
    finally:
        os.close(descriptor)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise BadFile(f"{path} is not JSON: {error}") from None


class _Reader:
    """Typed reads of a config's keys: a key that is absent or null is None; one of another
    type, or not above 0, is a ``BadFile`` naming it."""

    def __init__(self, config: Mapping[str, Any], path: Path) -> None:
        self.config, self.path = config, path

    def integer(self, key: str, within: Mapping[str, Any] | None = None) -> int | None:
        value = (self.config if within is None else within).get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadFile(f"{self.path}: {key} must be a whole number above 0, got {value!r}")
        return value

    def number(self, key: str, within: Mapping[str, Any] | None = None) -> float | None:
        value = (self.config if within is None else within).get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise BadFile(f"{self.path}: {key} must be a finite number above 0, got {value!r}")
        return float(value)

    def text(self, key: str, within: Mapping[str, Any] | None = None) -> str | None:
        value = (self.config if within is None else within).get(key)
        if value is not None and not isinstance(value, str):
            raise BadFile(f"{self.path}: {key} must be a string, got {value!r}")
        return value

    def table(self, key: str) -> dict[str, Any]:
        value = self.config.get(key)
        if value is not None and not isinstance(value, dict):
            raise BadFile(f"{self.path}: {key} must be a table of settings, got {value!r}")
        return value or {}


def _parse(config: Mapping[str, Any], path: Path) -> TransformersConfig:
    read = _Reader(config, path)
    params: dict[str, ParamValue] = {}
    for key, names in _PARAMS.items():
        value = read.number(key) if key == "rms_norm_eps" else read.integer(key)
        if value is not None:
            params.update(dict.fromkeys(names, value))
    rope = read.table("rope_parameters")
    theta = read.number("rope_theta", rope) or read.number("rope_theta")
    if theta is not None:
        params["rope_base"] = theta
    architectures = config.get("architectures")
    causal_lm = isinstance(architectures, list) and any(
        isinstance(name, str) and name.endswith("ForCausalLM") for name in architectures
    )
    tied = config.get("tie_word_embeddings")
    modules = dict(_LANGUAGE_MODEL_MODULES) if causal_lm else {}
    if "norm_eps" in params:  # transformers' Llama family names an RMSNorm's epsilon so
        modules |= dict.fromkeys(_RMS_NORMS, "rmsnorm")
        if config["model_type"] in _LLAMA_LIKE:
            params |= {"norm": "rmsnorm", "causal": True, "rotary": True}
    return TransformersConfig(
        model_type=str(config["model_type"]),
        params=params,
        max_positions=read.integer("max_position_embeddings"),
        causal_lm=causal_lm,
        tied_embeddings=tied if isinstance(tied, bool) else None,
        checks=tuple(_checks(config, read, rope)),
        modules=modules,
    )


def _checks(config: Mapping[str, Any], read: _Reader, rope: Mapping[str, Any]) -> list[str]:
    """What layerport's Llama block does not compute as ``config`` asks, one line each."""
    checks = []
    model_type = config["model_type"]
    if model_type not in _LLAMA_LIKE:
        checks.append(
            f"model_type {model_type!r}: decoder_block computes Llama's block; check that "
            "this family's does the same (its norms, its embedding's scale)."
        )
    activation = read.text("hidden_act")
    if activation is not None and activation not in _SILU:
        checks.append(f"hidden_act {activation!r}: decoder_block's MLP uses SiLU.")
    scaling = read.table("rope_scaling")  # transformers 4.x's, beside or instead of 5.x's
    types = [read.text("rope_type", rope), read.text("rope_type", scaling)]
    types.append(read.text("type", scaling))
    rope_type = next((kind for kind in types if kind not in (None, "default")), None)
    if rope_type is not None:
        checks.append(
            f"rotary scaling {rope_type!r}: decoder_block computes the default rotary "
            "embeddings, so every position's result would differ from transformers'."
        )
    # transformers 5.x writes it among the rotary settings, 4.x at the top.
    partial = read.number("partial_rotary_factor", rope) or read.number("partial_rotary_factor")
    if partial is not None and partial != 1:
        checks.append(f"partial_rotary_factor {partial}: decoder_block rotates every feature.")
    window = read.integer("sliding_window")
    positions = read.integer("max_position_embeddings")
    if (
        window is not None
        and config.get("use_sliding_window", True) is not False
        and (positions is None or window < positions)
    ):
        checks.append(
            f"sliding_window {window}: decoder_block attends to every earlier token, as the "
            f"window does only while prompt and generated ids together stay within {window} "
            "positions; dims.past max caps the cache, not the prompt."
        )
    return checks

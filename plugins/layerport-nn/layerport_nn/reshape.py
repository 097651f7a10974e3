"""Permutes and reshapes over named dims, one layer type per pair of layouts.

A spec's tensors have a fixed rank and name each dim, so a general
``permute(dims=...)`` or ``reshape(shape=...)`` cannot be declared: the output's
rank and which of its dims are dynamic would depend on a parameter. What a
model file needs between torch's layers is a handful of fixed moves, each its
own layer type, each with its dims named:

- ``permute_to_channels``: tokens (batch, seq, features) to channels-first
  (batch, features, seq), to feed a ``conv1d``, ``batchnorm1d`` or pool from an
  embedding or an lstm (``x.transpose(1, 2)`` in a torch model);
- ``permute_to_tokens``: channels-first (batch, channels, length) back to
  tokens (batch, length, channels), for an lstm, a layernorm or a per-position
  ``linear``;
- ``reshape_split``: the last dim into two, (batch, seq, features) to (batch,
  seq, parts, features // parts), attention's heads x head_dim
  (``nn.Unflatten(-1, ...)``);
- ``reshape_merge``: the last two dims into one, (batch, seq, parts, part_size)
  to (batch, seq, parts * part_size), the heads merged back
  (``nn.Flatten(2)``);
- ``flatten1d``: a channels-first sequence to one row, (batch, channels,
  length) to (batch, channels * length) (``nn.Flatten()``; ``flatten`` does
  images).

The derived dims (``features // parts``, ``channels * length``) are formulas,
so the file names them and verification checks them at sizes never traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerport.plugin import Dim, InvalidParameter, LayerSpec, Param, Params, Tensor
from layerport_nn.common import BATCH, SEQ

if TYPE_CHECKING:
    import torch
    from torch import nn

LENGTH = Dim("length", 16, "positions per sequence", check_size=41)


def _transpose(params: Params) -> nn.Module:
    """Swaps the last two dims: (batch, a, b) to (batch, b, a)."""
    from torch import nn

    class Transpose(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2)

    return Transpose()


def _transpose_reference(module: Any) -> Callable[..., Any]:
    """Each output row gathered from the input's columns, one at a time."""
    import torch

    return lambda x: torch.stack([x[:, :, column] for column in range(x.shape[2])], dim=1)


def _split(params: Params) -> nn.Module:
    from torch import nn

    parts = _parts(params)
    return nn.Unflatten(-1, (parts, int(params["features"]) // parts))


def _parts(params: Params) -> int:
    """``parts``, after checking that it divides ``features`` (no weights: ``weights()``)."""
    parts, features = int(params["parts"]), int(params["features"])
    if features % parts:
        raise InvalidParameter(f"features={features} is not divisible by parts={parts}")
    return parts


def _check_parts(params: Params) -> dict[str, tuple[int, ...]]:
    _parts(params)
    return {}


def _split_reference(module: Any) -> Callable[..., Any]:
    """Consecutive slices of the last dim, stacked: part ``i`` is ``x[..., i * size:(i + 1) * size]``."""
    import torch

    parts, size = module.unflattened_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., part * size : (part + 1) * size] for part in range(parts)], -2)

    return split


def _flatten(start_dim: int) -> Callable[[Params], nn.Module]:
    def build(params: Params) -> nn.Module:
        from torch import nn

        return nn.Flatten(start_dim)

    return build


def _concatenate_reference(module: Any) -> Callable[..., Any]:
    """The last two dims' rows concatenated, in order: row ``i`` at ``i * size``."""
    import torch

    def merge(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.select(-2, row) for row in range(x.shape[-2])], dim=-1)

    return merge


def move_spec(
    name: str,
    description: str,
    build: Callable[[Params], nn.Module],
    params: tuple[Param, ...],
    moved: tuple[tuple[str, ...], tuple[str, ...]],
    reference: Callable[[Any], Callable[..., Any]],
    weights: Callable[[Params], dict[str, tuple[int, ...]]] = lambda params: {},
) -> LayerSpec:
    """A weightless layer that moves ``x``'s values from one layout to another, ``moved``."""
    layout_in, layout_out = moved
    return LayerSpec(
        name=name,
        description=description,
        build=build,
        weights=weights,
        params=params,
        dims=(BATCH, SEQ if "seq" in layout_in else LENGTH),
        inputs=(Tensor("x", layout_in, "input"),),
        outputs=(Tensor("y", layout_out, "the same values, moved"),),
        reference=reference,
        batch_dim="batch",
    )


_CHANNELS = Param("channels", int, 4, "channels per position", minimum=1)
_FEATURES = Param("features", int, 16, "size of the last dim", minimum=1)

PERMUTE_TO_CHANNELS = move_spec(
    "permute_to_channels",
    "Tokens (batch, seq, features) to channels-first (batch, features, seq), as x.transpose(1, 2).",
    _transpose,
    (_FEATURES,),
    (("batch", "seq", "features"), ("batch", "features", "seq")),
    _transpose_reference,
)
PERMUTE_TO_TOKENS = move_spec(
    "permute_to_tokens",
    "Channels-first (batch, channels, length) to tokens (batch, length, channels), as x.transpose(1, 2).",
    _transpose,
    (_CHANNELS,),
    (("batch", "channels", "length"), ("batch", "length", "channels")),
    _transpose_reference,
)
RESHAPE_SPLIT = move_spec(
    "reshape_split",
    "The last dim split in parts: (batch, seq, features) to (batch, seq, parts, features // parts).",
    _split,
    (
        _FEATURES,
        Param("parts", int, 4, "parts it is split into (heads); divides features", minimum=1),
    ),
    (("batch", "seq", "features"), ("batch", "seq", "parts", "features // parts")),
    _split_reference,
    weights=_check_parts,
)
RESHAPE_MERGE = move_spec(
    "reshape_merge",
    "The last two dims merged: (batch, seq, parts, part_size) to (batch, seq, parts * part_size).",
    _flatten(2),
    (
        Param("parts", int, 4, "size of the second-to-last dim (attention's heads)", minimum=1),
        Param("part_size", int, 4, "size of the last dim (attention's head_dim)", minimum=1),
    ),
    (("batch", "seq", "parts", "part_size"), ("batch", "seq", "parts * part_size")),
    _concatenate_reference,
)
FLATTEN1D = move_spec(
    "flatten1d",
    "torch.nn.Flatten: (batch, channels, length) to (batch, channels * length).",
    _flatten(1),
    (_CHANNELS,),
    (("batch", "channels", "length"), ("batch", "channels * length")),
    _concatenate_reference,
)
RESHAPES = (PERMUTE_TO_CHANNELS, PERMUTE_TO_TOKENS, RESHAPE_SPLIT, RESHAPE_MERGE, FLATTEN1D)

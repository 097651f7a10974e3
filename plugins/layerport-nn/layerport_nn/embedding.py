"""``embedding``: ``torch.nn.Embedding``, int64 ids in, one row of the table per id out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport.plugin import ALL_PRECISIONS, LayerSpec, Param, Params, ParamValue, Tensor
from layerport_nn.common import BATCH, POSITIONWISE, SEQ

if TYPE_CHECKING:
    from torch import nn

NO_PADDING = -1


def _padding_idx(params: Params) -> int | None:
    padding = int(params["padding_idx"])
    if padding >= int(params["num_embeddings"]):
        from layerport.plugin import InvalidParameter

        raise InvalidParameter(
            f"padding_idx={padding} is not a row of the table (num_embeddings="
            f"{params['num_embeddings']})"
        )
    return None if padding == NO_PADDING else padding


def _weights(params: Params) -> dict[str, tuple[int, ...]]:
    _padding_idx(params)
    return {"weight": (int(params["num_embeddings"]), int(params["embedding_dim"]))}


def _build(params: Params) -> nn.Module:
    from torch import nn

    return nn.Embedding(
        int(params["num_embeddings"]), int(params["embedding_dim"]), _padding_idx(params)
    )


def _params_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """The table's shape is ``(num_embeddings, embedding_dim)``; ``padding_idx`` leaves no trace."""
    num_embeddings, embedding_dim = shapes["weight"]
    return {"num_embeddings": num_embeddings, "embedding_dim": embedding_dim}


def _reference(module: Any) -> Callable[..., Any]:
    """Indexing the table's rows: what a lookup is, without torch's embedding op."""
    return lambda ids: module.weight[ids]


EMBEDDING = LayerSpec(
    name="embedding",
    description="torch.nn.Embedding: int64 ids (batch, seq) to rows of a table (batch, seq, embedding_dim).",
    build=_build,
    weights=_weights,
    params=(
        Param("num_embeddings", int, 20, "rows in the table: ids are below it", minimum=1),
        Param("embedding_dim", int, 8, "width of each row", minimum=1),
        Param(
            "padding_idx",
            int,
            NO_PADDING,
            "the id whose row is zeros in seeded weights, counted from 0; -1: none",
            minimum=NO_PADDING,
        ),
    ),
    dims=(BATCH, SEQ),
    streaming=POSITIONWISE,
    inputs=(
        Tensor(
            "ids",
            ("batch", "seq"),
            "ids below num_embeddings",
            dtype="int64",
            high="num_embeddings",
        ),
    ),
    outputs=(Tensor("y", ("batch", "seq", "embedding_dim"), "the ids' rows"),),
    reference=_reference,
    batch_dim="batch",
    params_from_weights=_params_from_weights,
    precisions=ALL_PRECISIONS,
)

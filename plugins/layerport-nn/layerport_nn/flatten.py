"""``flatten``: ``torch.nn.Flatten`` of an image batch to one row per image.

The row's length is ``channels * height * width``, a derived dim: the file
names it by that formula, and verification checks it at sizes never traced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerport.plugin import Dim, LayerSpec, Param, Params, Tensor
from layerport_nn.common import BATCH

if TYPE_CHECKING:
    from torch import nn


def _build(params: Params) -> nn.Module:
    from torch import nn

    return nn.Flatten()


FLATTEN = LayerSpec(
    name="flatten",
    description="torch.nn.Flatten: (batch, channels, height, width) to (batch, channels * height * width).",
    build=_build,
    weights=lambda params: {},
    params=(Param("channels", int, 4, "channels per image", minimum=1),),
    dims=(
        BATCH,
        Dim("height", 5, "rows per image", check_size=13),
        Dim("width", 3, "columns per image", check_size=11),
    ),
    inputs=(Tensor("x", ("batch", "channels", "height", "width"), "input"),),
    outputs=(Tensor("y", ("batch", "channels * height * width"), "one row per image"),),
    reference=lambda module: lambda x: x.reshape(x.shape[0], -1),
    batch_dim="batch",
)

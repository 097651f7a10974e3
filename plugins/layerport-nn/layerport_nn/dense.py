"""``dense``: ``torch.nn.Linear`` applied at every position of a sequence.

The built-in ``linear`` maps one vector per sample, (batch, in_features). A
tagger's head, a transformer's projections and a model's output layer apply the
same ``nn.Linear`` to each position of (batch, seq, in_features): torch's module
takes any leading dims, but a layer's dims are fixed by its spec, so the
sequence form is its own layer type. The checkpoint keys are torch's (``weight``,
``bias``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport.plugin import ALL_PRECISIONS, LayerSpec, Param, Params, ParamValue, Tensor
from layerport_nn.common import BATCH, SEQ

if TYPE_CHECKING:
    from torch import nn


def _weights(params: Params) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "weight": (int(params["out_features"]), int(params["in_features"]))
    }
    if params["bias"]:
        shapes["bias"] = (int(params["out_features"]),)
    return shapes


def _build(params: Params) -> nn.Module:
    from torch import nn

    return nn.Linear(int(params["in_features"]), int(params["out_features"]), bool(params["bias"]))


def _params_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """``weight`` is (out_features, in_features); a ``bias`` is there or not."""
    out_features, in_features = shapes["weight"]
    return {"in_features": in_features, "out_features": out_features, "bias": "bias" in shapes}


def _reference(module: Any) -> Callable[..., Any]:
    """The matrix product written out, without torch's linear op."""

    def dense(x: Any) -> Any:
        y = x @ module.weight.T
        return y if module.bias is None else y + module.bias

    return dense


DENSE = LayerSpec(
    name="dense",
    description="torch.nn.Linear at every position: (batch, seq, in_features) to (batch, seq, out_features).",
    build=_build,
    weights=_weights,
    params=(
        Param("in_features", int, 16, "size of each input vector", minimum=1),
        Param("out_features", int, 8, "size of each output vector", minimum=1),
        Param("bias", bool, True, "learn an additive bias"),
    ),
    dims=(BATCH, SEQ),
    inputs=(Tensor("x", ("batch", "seq", "in_features"), "one vector per position"),),
    outputs=(Tensor("y", ("batch", "seq", "out_features"), "x @ weight.T + bias"),),
    reference=_reference,
    flops=lambda p, d: 2 * d["batch"] * d["seq"] * int(p["in_features"]) * int(p["out_features"]),
    batch_dim="batch",
    params_from_weights=_params_from_weights,
    precisions=ALL_PRECISIONS,
)

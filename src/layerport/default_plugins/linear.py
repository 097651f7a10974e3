"""The built-in ``linear`` layer type: ``y = activation(x @ weight.T + bias)``.

``-p activation=sigmoid`` with the defaults is the seed notebook's two-class
classifier, a Linear layer 8 -> 2 followed by a sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport import Dim, LayerSpec, Param, Tensor, hookimpl
from layerport.spec import ALL_PRECISIONS, Dims, Params, ParamValue

if TYPE_CHECKING:
    from torch import nn

ACTIVATIONS = ("none", "sigmoid", "tanh", "relu")


def build_linear(params: Params) -> nn.Module:
    from layerport.default_plugins.modules import Linear

    return Linear(
        in_features=int(params["in_features"]),
        out_features=int(params["out_features"]),
        bias=bool(params["bias"]),
        activation=str(params["activation"]),
    )


def linear_weights(params: Params) -> dict[str, tuple[int, ...]]:
    weights: dict[str, tuple[int, ...]] = {
        "weight": (int(params["out_features"]), int(params["in_features"]))
    }
    if params["bias"]:
        weights["bias"] = (int(params["out_features"]),)
    return weights


def linear_params_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """``nn.Linear``'s state dict gives the sizes and the bias, not the activation."""
    out_features, in_features = shapes["weight"]
    return {"in_features": in_features, "out_features": out_features, "bias": "bias" in shapes}


def linear_flops(params: Params, dims: Dims) -> int:
    return 2 * dims["batch"] * int(params["in_features"]) * int(params["out_features"])


def linear_reference(module: Any) -> Callable[..., Any]:
    """A bare ``torch.addmm`` (or ``mm``) on the module's own tensors."""
    import torch

    weight_t = module.weight.detach().t().contiguous()
    bias = None if module.bias is None else module.bias.detach()
    activation = module.activation

    def reference(x: torch.Tensor) -> torch.Tensor:
        y = torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)
        return activation(y)

    return reference


LINEAR = LayerSpec(
    name="linear",
    description="Fully connected layer with an optional activation (the notebook's 8 -> 2 classifier).",
    build=build_linear,
    weights=linear_weights,
    params=(
        Param("in_features", int, 8, "size of each input sample", minimum=1),
        Param("out_features", int, 2, "size of each output sample", minimum=1),
        Param("bias", bool, True, "learn an additive bias"),
        Param("activation", str, "none", "applied to the output", choices=ACTIVATIONS),
    ),
    dims=(Dim("batch", 16, "number of samples", check_size=37),),
    inputs=(Tensor("x", ("batch", "in_features"), "input samples"),),
    outputs=(Tensor("y", ("batch", "out_features"), "activation(x @ weight.T + bias)"),),
    reference=linear_reference,
    flops=linear_flops,
    batch_dim="batch",
    precisions=ALL_PRECISIONS,
    params_from_weights=linear_params_from_weights,
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(LINEAR)

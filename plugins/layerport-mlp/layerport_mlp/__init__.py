"""The ``mlp`` layer type: a transformer-style MLP block over a batch of token sequences.

``fc1`` widens each token to ``hidden_features``, ``norm`` (LayerNorm) and the
activation act on that width, and ``fc2`` projects to ``out_features``. Tokens
are independent, so both batch and tokens are dynamic. This module only
declares the spec and must stay torch-free: ``layerport list`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerport.plugin import ALL_PRECISIONS, Dim, Dims, LayerSpec, Param, Params, Tensor, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

ACTIVATIONS = ("silu", "relu", "tanh")


def build_mlp(params: Params) -> nn.Module:
    from layerport_mlp.module import MLP

    return MLP(
        in_features=int(params["in_features"]),
        hidden_features=int(params["hidden_features"]),
        out_features=int(params["out_features"]),
        activation=str(params["activation"]),
        eps=float(params["eps"]),
    )


def mlp_weights(params: Params) -> dict[str, tuple[int, ...]]:
    in_features, hidden_features, out_features = (
        int(params[name]) for name in ("in_features", "hidden_features", "out_features")
    )
    return {
        "fc1.weight": (hidden_features, in_features),
        "fc1.bias": (hidden_features,),
        "norm.weight": (hidden_features,),
        "norm.bias": (hidden_features,),
        "fc2.weight": (out_features, hidden_features),
        "fc2.bias": (out_features,),
    }


def mlp_flops(params: Params, dims: Dims) -> int:
    """The two matmuls; LayerNorm and the activation are a rounding error."""
    in_features, hidden_features, out_features = (
        int(params[name]) for name in ("in_features", "hidden_features", "out_features")
    )
    tokens = dims["batch"] * dims["tokens"]
    return tokens * 2 * hidden_features * (in_features + out_features)


def mlp_reference(module: Any) -> Callable[..., Any]:
    """The block as ``torch.nn.functional`` calls on the module's own tensors."""
    import torch
    from torch.nn import functional

    fc1, norm, fc2 = module.fc1, module.norm, module.fc2
    activations: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "silu": functional.silu,
        "relu": functional.relu,
        "tanh": torch.tanh,
    }
    activation = activations[module.activation_name]

    def reference(x: torch.Tensor) -> torch.Tensor:
        hidden = functional.linear(x, fc1.weight, fc1.bias)
        hidden = functional.layer_norm(
            hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps
        )
        return functional.linear(activation(hidden), fc2.weight, fc2.bias)

    return reference


MLP = LayerSpec(
    name="mlp",
    description="Transformer-style MLP block: Linear, LayerNorm, activation, Linear, per token.",
    build=build_mlp,
    weights=mlp_weights,
    params=(
        Param("in_features", int, 16, "features per input token", minimum=1),
        Param("hidden_features", int, 64, "width of the hidden layer", minimum=1),
        Param("out_features", int, 16, "features per output token", minimum=1),
        Param("activation", str, "silu", "applied after the LayerNorm", choices=ACTIVATIONS),
        Param("eps", float, 1e-5, "LayerNorm's variance epsilon", minimum=1e-12, maximum=1e-1),
    ),
    dims=(
        Dim("batch", 4, "number of sequences", check_size=37),
        Dim("tokens", 10, "tokens per sequence", check_size=53),
    ),
    inputs=(Tensor("x", ("batch", "tokens", "in_features"), "input tokens"),),
    outputs=(Tensor("y", ("batch", "tokens", "out_features"), "fc2(act(norm(fc1(x))))"),),
    reference=mlp_reference,
    flops=mlp_flops,
    batch_dim="batch",
    precisions=ALL_PRECISIONS,
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(MLP)

"""The ``gru`` layer type: the same function as ``torch.nn.GRU(batch_first=True)``.

Stacked (``num_layers``) and bidirectional, with ``nn.GRU``'s own state-dict
keys (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) and its state layout,
``(num_layers x directions, batch, hidden_size)``, so a trained ``nn.GRU``'s
weights load as they are, sizes included. Version 0.2.0 changed the contract:
0.1.0's keys had no ``_l0`` and its ``h0`` was ``(batch, hidden_size)``. This
module only declares the spec and must stay torch-free: ``layerport list``
imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport import Dim, Dims, LayerSpec, Param, Params, Streaming, Tensor, hookimpl
from layerport.spec import ParamValue

if TYPE_CHECKING:
    import torch
    from torch import nn

DIRECTIONS = "(2 if bidirectional else 1)"
STATE_DIMS = (f"num_layers * {DIRECTIONS}", "batch", "hidden_size")


def build_gru(params: Params) -> nn.Module:
    from layerport_gru.module import GRU

    return GRU(
        input_size=int(params["input_size"]),
        hidden_size=int(params["hidden_size"]),
        num_layers=int(params["num_layers"]),
        bidirectional=bool(params["bidirectional"]),
        bias=bool(params["bias"]),
    )


def gru_weights(params: Params) -> dict[str, tuple[int, ...]]:
    """``nn.GRU``'s state-dict keys and shapes: three gates (reset, update, new) per block."""
    input_size, hidden_size = int(params["input_size"]), int(params["hidden_size"])
    directions = 2 if params["bidirectional"] else 1
    weights: dict[str, tuple[int, ...]] = {}
    for layer in range(int(params["num_layers"])):
        layer_input = input_size if layer == 0 else hidden_size * directions
        for suffix in ("", "_reverse")[:directions]:
            weights[f"weight_ih_l{layer}{suffix}"] = (3 * hidden_size, layer_input)
            weights[f"weight_hh_l{layer}{suffix}"] = (3 * hidden_size, hidden_size)
            if params["bias"]:
                weights[f"bias_ih_l{layer}{suffix}"] = (3 * hidden_size,)
                weights[f"bias_hh_l{layer}{suffix}"] = (3 * hidden_size,)
    return weights


def gru_params_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """The sizes ``nn.GRU``'s state dict implies, so a trained GRU loads with no ``-p``."""
    layers = {name for name in shapes if name.startswith("weight_ih_l") and "_reverse" not in name}
    return {
        "input_size": shapes["weight_ih_l0"][1],
        "hidden_size": shapes["weight_hh_l0"][1],
        "num_layers": len(layers),
        "bidirectional": "weight_ih_l0_reverse" in shapes,
        "bias": "bias_ih_l0" in shapes,
    }


def gru_flops(params: Params, dims: Dims) -> int:
    """The two matmuls per step and layer; the gates' elementwise work is a rounding error."""
    matrices = [shape for shape in gru_weights(params).values() if len(shape) == 2]
    return dims["batch"] * dims["seq"] * sum(2 * rows * columns for rows, columns in matrices)


def gru_reference(module: Any) -> Callable[..., Any]:
    """``torch.nn.GRU`` holding the module's weights: a fresh instance, independent of it."""
    from torch import nn

    gru = nn.GRU(
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=True,
        bidirectional=module.bidirectional,
        dtype=module.weight_ih_l0.dtype,
    )
    gru.load_state_dict(module.state_dict())
    gru.eval().requires_grad_(False)

    def reference(
        x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, h_n = gru(x, h0)
        return y, h_n

    return reference


GRU = LayerSpec(
    name="gru",
    description="Gated recurrent unit, stacked or bidirectional: torch.nn.GRU(batch_first=True).",
    build=build_gru,
    weights=gru_weights,
    params=(
        Param("input_size", int, 32, "features per time step", minimum=1),
        Param("hidden_size", int, 48, "size of each hidden state", minimum=1),
        Param("num_layers", int, 1, "stacked GRU layers", minimum=1, maximum=16),
        Param("bidirectional", bool, False, "also run the sequence backwards"),
        Param("bias", bool, True, "learn the biases bias_ih and bias_hh"),
    ),
    dims=(
        Dim("batch", 8, "number of sequences", check_size=37),
        Dim("seq", 32, "time steps per sequence", check_size=301),
    ),
    inputs=(
        Tensor("x", ("batch", "seq", "input_size"), "input sequence"),
        Tensor("h0", STATE_DIMS, "initial hidden states; zeros if omitted", optional=True),
    ),
    outputs=(
        Tensor(
            "y", ("batch", "seq", f"{DIRECTIONS} * hidden_size"), "last layer's h at every step"
        ),
        Tensor("h_n", STATE_DIMS, "hidden states after the last step"),
    ),
    # The backward direction needs the whole sequence, so a bidirectional GRU cannot stream.
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"),), unless="bidirectional"),
    reference=gru_reference,
    flops=gru_flops,
    batch_dim="batch",
    params_from_weights=gru_params_from_weights,
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(GRU)

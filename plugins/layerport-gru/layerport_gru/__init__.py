"""The ``gru`` layer type: a one-layer GRU, the same function as ``torch.nn.GRU``.

The weights have ``nn.GRU``'s layer-0 names and layouts without the ``_l0``
suffix, so a trained ``nn.GRU`` loads by renaming its keys. This module only
declares the spec and must stay torch-free: ``layerport list`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerport import Dim, Dims, LayerSpec, Param, Params, Streaming, Tensor, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn


def build_gru(params: Params) -> nn.Module:
    from layerport_gru.module import GRU

    return GRU(
        input_size=int(params["input_size"]),
        hidden_size=int(params["hidden_size"]),
        bias=bool(params["bias"]),
    )


def gru_weights(params: Params) -> dict[str, tuple[int, ...]]:
    input_size, hidden_size = int(params["input_size"]), int(params["hidden_size"])
    weights: dict[str, tuple[int, ...]] = {
        "weight_ih": (3 * hidden_size, input_size),
        "weight_hh": (3 * hidden_size, hidden_size),
    }
    if params["bias"]:
        weights |= {"bias_ih": (3 * hidden_size,), "bias_hh": (3 * hidden_size,)}
    return weights


def gru_flops(params: Params, dims: Dims) -> int:
    """The two matmuls per step; the gates' elementwise work is a rounding error."""
    input_size, hidden_size = int(params["input_size"]), int(params["hidden_size"])
    return dims["batch"] * dims["seq"] * 2 * 3 * hidden_size * (input_size + hidden_size)


def gru_reference(module: Any) -> Callable[..., Any]:
    """``torch.nn.GRU`` holding the module's weights: fused, fastest, and independent of it."""
    from torch import nn

    has_bias = module.bias_ih is not None
    gru = nn.GRU(
        module.input_size,
        module.hidden_size,
        bias=has_bias,
        batch_first=True,
        dtype=module.weight_ih.dtype,
    )
    gru.load_state_dict({f"{name}_l0": tensor for name, tensor in module.state_dict().items()})
    gru.eval().requires_grad_(False)

    def reference(
        x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y, h_n = gru(x, None if h0 is None else h0.unsqueeze(0))
        return y, h_n.squeeze(0)

    return reference


GRU = LayerSpec(
    name="gru",
    description="Gated recurrent unit over a sequence, the same function as torch.nn.GRU.",
    build=build_gru,
    weights=gru_weights,
    params=(
        Param("input_size", int, 32, "features per time step", minimum=1),
        Param("hidden_size", int, 48, "size of the hidden state", minimum=1),
        Param("bias", bool, True, "learn the biases bias_ih and bias_hh"),
    ),
    dims=(
        Dim("batch", 8, "number of sequences", check_size=37),
        Dim("seq", 32, "time steps per sequence", check_size=301),
    ),
    inputs=(
        Tensor("x", ("batch", "seq", "input_size"), "input sequence"),
        Tensor(
            "h0", ("batch", "hidden_size"), "initial hidden state; zeros if omitted", optional=True
        ),
    ),
    outputs=(
        Tensor("y", ("batch", "seq", "hidden_size"), "hidden state after every step"),
        Tensor("h_n", ("batch", "hidden_size"), "hidden state after the last step"),
    ),
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"),)),
    reference=gru_reference,
    flops=gru_flops,
    batch_dim="batch",
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(GRU)

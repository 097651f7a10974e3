"""layerport-recurrent: torch.nn.LSTM and torch.nn.RNN as layer types, stacked or bidirectional.

- ``lstm``: the same function as ``torch.nn.LSTM(batch_first=True)``;
- ``elman``: the same function as ``torch.nn.RNN(batch_first=True)``, without a head.

Both keep torch's own state-dict keys (``weight_ih_l0``, ``bias_hh_l1_reverse``)
and state layout (``num_layers x directions, batch, hidden_size``), so a trained
module's weights load as they are, and both read their sizes from those weights.
This module declares the specs and must stay torch-free: ``layerport list``
imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport import Dim, LayerSpec, Param, Streaming, Tensor, hookimpl
from layerport.spec import Dims, Params, ParamValue

if TYPE_CHECKING:
    from torch import nn

DIRECTIONS = "(2 if bidirectional else 1)"
STATE_DIMS = (f"num_layers * {DIRECTIONS}", "batch", "hidden_size")
BATCH_AND_SEQ = (
    Dim("batch", 8, "number of sequences", check_size=37),
    Dim("seq", 32, "time steps per sequence", check_size=301),
)


def torch_layout_sizes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """The sizes a torch ``nn.RNN``/``GRU``/``LSTM`` state dict implies, from its keys and shapes."""
    layers = {name for name in shapes if name.startswith("weight_ih_l") and "_reverse" not in name}
    return {
        "input_size": shapes["weight_ih_l0"][1],
        "hidden_size": shapes["weight_hh_l0"][1],
        "num_layers": len(layers),
        "bidirectional": "weight_ih_l0_reverse" in shapes,
        "bias": "bias_ih_l0" in shapes,
    }


def torch_layout_weights(params: Params, gates: int) -> dict[str, tuple[int, ...]]:
    """torch's recurrent state-dict keys and shapes, ``gates`` blocks per matrix (LSTM: 4)."""
    input_size, hidden_size = int(params["input_size"]), int(params["hidden_size"])
    directions = 2 if params["bidirectional"] else 1
    weights: dict[str, tuple[int, ...]] = {}
    for layer in range(int(params["num_layers"])):
        layer_input = input_size if layer == 0 else hidden_size * directions
        for suffix in ("", "_reverse")[:directions]:
            weights[f"weight_ih_l{layer}{suffix}"] = (gates * hidden_size, layer_input)
            weights[f"weight_hh_l{layer}{suffix}"] = (gates * hidden_size, hidden_size)
            if params["bias"]:
                weights[f"bias_ih_l{layer}{suffix}"] = (gates * hidden_size,)
                weights[f"bias_hh_l{layer}{suffix}"] = (gates * hidden_size,)
    return weights


def matmul_flops(weights: Mapping[str, tuple[int, ...]], dims: Dims) -> int:
    per_step = sum(2 * shape[0] * shape[1] for shape in weights.values() if len(shape) == 2)
    return dims["batch"] * dims["seq"] * per_step


def torch_reference(kind: str) -> Callable[[Any], Callable[..., Any]]:
    """A reference factory: ``torch.nn.<kind>`` itself, holding the module's weights."""

    def reference(module: Any) -> Callable[..., Any]:
        import torch

        options = {"nonlinearity": module.nonlinearity} if kind == "RNN" else {}
        twin = getattr(torch.nn, kind)(
            module.input_size,
            module.hidden_size,
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=True,
            bidirectional=module.bidirectional,
            dtype=module.weight_ih_l0.dtype,
            **options,
        )
        twin.load_state_dict(module.state_dict())
        twin.eval().requires_grad_(False)
        return module.reference_call(twin)

    return reference


def build_lstm(params: Params) -> nn.Module:
    from layerport_recurrent.module import LSTM

    return LSTM(
        input_size=int(params["input_size"]),
        hidden_size=int(params["hidden_size"]),
        num_layers=int(params["num_layers"]),
        bidirectional=bool(params["bidirectional"]),
        bias=bool(params["bias"]),
    )


def build_elman(params: Params) -> nn.Module:
    from layerport_recurrent.module import StackedElman

    return StackedElman(
        input_size=int(params["input_size"]),
        hidden_size=int(params["hidden_size"]),
        num_layers=int(params["num_layers"]),
        nonlinearity=str(params["nonlinearity"]),
        bias=bool(params["bias"]),
        bidirectional=bool(params["bidirectional"]),
    )


LSTM = LayerSpec(
    name="lstm",
    description="LSTM over a sequence, stacked or bidirectional: torch.nn.LSTM(batch_first=True).",
    build=build_lstm,
    weights=lambda params: torch_layout_weights(params, gates=4),
    params=(
        Param("input_size", int, 32, "features per time step", minimum=1),
        Param("hidden_size", int, 32, "size of each hidden state", minimum=1),
        Param("num_layers", int, 1, "stacked LSTM layers", minimum=1, maximum=16),
        Param("bidirectional", bool, False, "also run the sequence backwards"),
        Param("bias", bool, True, "learn the bias_ih and bias_hh vectors"),
    ),
    dims=BATCH_AND_SEQ,
    inputs=(
        Tensor("x", ("batch", "seq", "input_size"), "input sequence"),
        Tensor("h0", STATE_DIMS, "initial hidden states; zeros if omitted", optional=True),
        Tensor("c0", STATE_DIMS, "initial cell states; zeros if omitted", optional=True),
    ),
    outputs=(
        Tensor(
            "y", ("batch", "seq", f"{DIRECTIONS} * hidden_size"), "last layer's h at every step"
        ),
        Tensor("h_n", STATE_DIMS, "hidden states after the last step"),
        Tensor("c_n", STATE_DIMS, "cell states after the last step"),
    ),
    # The backward direction needs the whole sequence, so a bidirectional LSTM cannot stream.
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"), ("c0", "c_n")), unless="bidirectional"),
    reference=torch_reference("LSTM"),
    flops=lambda params, dims: matmul_flops(torch_layout_weights(params, 4), dims),
    batch_dim="batch",
    params_from_weights=torch_layout_sizes,
)


ELMAN = LayerSpec(
    name="elman",
    description="Elman RNN, stacked or bidirectional, without a head: torch.nn.RNN(batch_first=True).",
    build=build_elman,
    weights=lambda params: torch_layout_weights(params, gates=1),
    params=(
        Param("input_size", int, 32, "features per time step", minimum=1),
        Param("hidden_size", int, 32, "size of each hidden state", minimum=1),
        Param("num_layers", int, 1, "stacked layers", minimum=1, maximum=16),
        Param("nonlinearity", str, "tanh", "applied to the hidden state", choices=("tanh", "relu")),
        Param("bias", bool, True, "learn the bias_ih and bias_hh vectors"),
        Param("bidirectional", bool, False, "also run the sequence backwards"),
    ),
    dims=BATCH_AND_SEQ,
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
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"),), unless="bidirectional"),
    reference=torch_reference("RNN"),
    flops=lambda params, dims: matmul_flops(torch_layout_weights(params, 1), dims),
    batch_dim="batch",
    params_from_weights=torch_layout_sizes,
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(LSTM)
    register(ELMAN)

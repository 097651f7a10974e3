"""The built-in ``rnn`` layer type: the seed notebook's Elman RNN, done right.

Three weight matrices (input -> hidden, hidden -> hidden, hidden -> output) over a
sequence, with an optional initial hidden state that defaults to zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport import Dim, LayerSpec, Param, Streaming, Tensor, WeightPart, hookimpl
from layerport.spec import ALL_PRECISIONS, Dims, Params, ParamValue

if TYPE_CHECKING:
    from torch import nn


def build_rnn(params: Params) -> nn.Module:
    from layerport.default_plugins.modules import ElmanRNN

    return ElmanRNN(
        input_size=int(params["input_size"]),
        hidden_size=int(params["hidden_size"]),
        output_size=int(params["output_size"]),
        nonlinearity=str(params["nonlinearity"]),
        bias=bool(params["bias"]),
    )


def rnn_weights(params: Params) -> dict[str, tuple[int, ...]]:
    sizes = {
        "wi": (int(params["hidden_size"]), int(params["input_size"])),
        "wh": (int(params["hidden_size"]), int(params["hidden_size"])),
        "wo": (int(params["output_size"]), int(params["hidden_size"])),
    }
    weights: dict[str, tuple[int, ...]] = {}
    for name, (rows, columns) in sizes.items():
        weights[f"{name}.weight"] = (rows, columns)
        if params["bias"]:
            weights[f"{name}.bias"] = (rows,)
    return weights


def rnn_params_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """The three matrices give every size and the bias, not the nonlinearity."""
    hidden_size, input_size = shapes["wi.weight"]
    return {
        "input_size": input_size,
        "hidden_size": hidden_size,
        "output_size": shapes["wo.weight"][0],
        "bias": "wi.bias" in shapes,
    }


def rnn_flops(params: Params, dims: Dims) -> int:
    input_size, hidden_size, output_size = (
        int(params[name]) for name in ("input_size", "hidden_size", "output_size")
    )
    per_step = 2 * hidden_size * (input_size + hidden_size + output_size)
    return dims["batch"] * dims["seq"] * per_step


def rnn_reference(module: Any) -> Callable[..., Any]:
    """``torch.nn.RNN`` followed by ``torch.nn.Linear``, holding the module's weights.

    This is the fastest eager way to compute the same function (cuDNN/oneDNN's
    fused recurrence), and an implementation independent of the module's own.
    """
    import torch
    from torch import nn

    wi, wh, wo = module.wi, module.wh, module.wo
    has_bias = wi.bias is not None
    options = {"bias": has_bias, "dtype": wi.weight.dtype}
    rnn = nn.RNN(
        wi.in_features,
        wi.out_features,
        nonlinearity=module.nonlinearity,
        batch_first=True,
        **options,
    )
    rnn.load_state_dict(
        {"weight_ih_l0": wi.weight, "weight_hh_l0": wh.weight}
        | ({"bias_ih_l0": wi.bias, "bias_hh_l0": wh.bias} if has_bias else {})
    )
    head = nn.Linear(wo.in_features, wo.out_features, **options)
    head.load_state_dict(wo.state_dict())
    for part in (rnn, head):
        part.eval().requires_grad_(False)

    def reference(x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        hidden, h_n = rnn(x, None if h0 is None else h0.unsqueeze(0))
        return head(hidden), h_n.squeeze(0)

    return reference


RNN = LayerSpec(
    name="rnn",
    description="Elman RNN over a sequence, with a linear read-out per step (the notebook's RNN).",
    build=build_rnn,
    weights=rnn_weights,
    params=(
        Param("input_size", int, 128, "features per time step", minimum=1),
        Param("hidden_size", int, 64, "size of the hidden state", minimum=1),
        Param("output_size", int, 16, "features out per time step", minimum=1),
        Param("nonlinearity", str, "tanh", "applied to the hidden state", choices=("tanh", "relu")),
        Param("bias", bool, True, "learn additive biases in wi, wh and wo"),
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
        Tensor("y", ("batch", "seq", "output_size"), "read-out at every step"),
        Tensor("h_n", ("batch", "hidden_size"), "hidden state after the last step"),
    ),
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"),)),
    reference=rnn_reference,
    flops=rnn_flops,
    batch_dim="batch",
    precisions=ALL_PRECISIONS,
    params_from_weights=rnn_params_from_weights,
    # A trained rnn usually arrives as an nn.RNN and an nn.Linear head, under
    # torch's key names: --weights-prefix recurrence=rnn. --weights-prefix head=fc.
    weight_parts=(
        WeightPart(
            "recurrence",
            "a one-layer torch.nn.RNN",
            {
                "weight_ih_l0": "wi.weight",
                "weight_hh_l0": "wh.weight",
                "bias_ih_l0": "wi.bias",
                "bias_hh_l0": "wh.bias",
            },
        ),
        WeightPart(
            "head", "a torch.nn.Linear read-out", {"weight": "wo.weight", "bias": "wo.bias"}
        ),
    ),
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(RNN)

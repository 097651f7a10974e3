"""torch's layout for recurrent layers, declared without torch: weights, sizes, a reference.

``torch.nn.RNN``, ``GRU`` and ``LSTM`` name their weights ``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (``_reverse`` for the
backward direction), each matrix ``gates`` blocks of ``hidden_size`` rows
(RNN 1, GRU 3, LSTM 4). An ``nn.LSTM`` with ``proj_size > 0`` projects
its hidden state: ``weight_hr_l{k}`` is (proj_size, hidden_size), and the
hidden state, ``weight_hh`` and the next layer's input are proj_size wide
while the cell state stays hidden_size wide. A layer type that keeps that layout declares its
``weights``, ``params_from_weights`` and ``reference`` with these, so trained
torch modules load as they are (``torch_layout_fields`` gives them all at once,
and ``torch_layout_arguments`` the module's constructor arguments). torch is
imported only when a reference is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from layerport.errors import InvalidParameter
from layerport.spec import ALL_PRECISIONS, Dim, Dims, Params, ParamValue

# Gate blocks per weight matrix, by torch module.
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
# A batch of sequences, verified at sizes that are not multiples of the traced ones.
BATCH_AND_SEQ = (
    Dim("batch", 8, "number of sequences", check_size=37),
    Dim("seq", 32, "time steps per sequence", check_size=301),
)

# torch's state layout as Tensor dims: h0, h_n (and an LSTM's c0, c_n) are
# (num_layers x directions, batch, hidden_size); y is (batch, seq, directions x hidden_size).
DIRECTIONS = "(2 if bidirectional else 1)"
STATE_DIMS = (f"num_layers * {DIRECTIONS}", "batch", "hidden_size")
OUTPUT_DIMS = ("batch", "seq", f"{DIRECTIONS} * hidden_size")
# An LSTM's hidden state (h0, h_n, y), proj_size wide when it projects; c0, c_n keep STATE_DIMS.
PROJECTED = "(proj_size if proj_size else hidden_size)"
PROJECTED_STATE_DIMS = (f"num_layers * {DIRECTIONS}", "batch", PROJECTED)
PROJECTED_OUTPUT_DIMS = ("batch", "seq", f"{DIRECTIONS} * {PROJECTED}")


def torch_layout_sizes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """The sizes a torch ``nn.RNN``/``GRU``/``LSTM`` state dict implies, from its keys and shapes."""
    layers = {name for name in shapes if name.startswith("weight_ih_l") and "_reverse" not in name}
    # A projecting LSTM's weight_hh is (4 x hidden_size, proj_size); weight_hr names both sizes.
    hidden = shapes["weight_hr_l0"][1] if "weight_hr_l0" in shapes else shapes["weight_hh_l0"][1]
    return {
        "input_size": shapes["weight_ih_l0"][1],
        "hidden_size": hidden,
        "num_layers": len(layers),
        "bidirectional": "weight_ih_l0_reverse" in shapes,
        "bias": "bias_ih_l0" in shapes,
    }


def lstm_sizes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """``torch_layout_sizes``, and ``nn.LSTM``'s ``proj_size``: ``weight_hr_l0``'s rows, else 0."""
    projection = shapes["weight_hr_l0"][0] if "weight_hr_l0" in shapes else 0
    return {**torch_layout_sizes(shapes), "proj_size": projection}


def torch_layout_weights(params: Params, gates: int) -> dict[str, tuple[int, ...]]:
    """torch's recurrent state-dict keys and shapes, ``gates`` blocks per matrix (LSTM: 4).

    In torch's order, ``weight_hr`` last, when ``params`` has a ``proj_size`` above 0.
    Raises ``InvalidParameter`` for a ``proj_size`` not below ``hidden_size``, as
    ``nn.LSTM`` does.
    """
    input_size, hidden_size = int(params["input_size"]), int(params["hidden_size"])
    projection = int(params.get("proj_size", 0))
    if projection >= hidden_size:
        raise InvalidParameter(
            f"proj_size={projection} must be smaller than hidden_size={hidden_size} "
            "(proj_size=0 for no projection)"
        )
    state_size = projection or hidden_size
    directions = 2 if params["bidirectional"] else 1
    weights: dict[str, tuple[int, ...]] = {}
    for layer in range(int(params["num_layers"])):
        layer_input = input_size if layer == 0 else state_size * directions
        for suffix in ("", "_reverse")[:directions]:
            weights[f"weight_ih_l{layer}{suffix}"] = (gates * hidden_size, layer_input)
            weights[f"weight_hh_l{layer}{suffix}"] = (gates * hidden_size, state_size)
            if params["bias"]:
                weights[f"bias_ih_l{layer}{suffix}"] = (gates * hidden_size,)
                weights[f"bias_hh_l{layer}{suffix}"] = (gates * hidden_size,)
            if projection:
                weights[f"weight_hr_l{layer}{suffix}"] = (projection, hidden_size)
    return weights


def torch_layout_arguments(params: Params) -> dict[str, Any]:
    """The constructor arguments torch's recurrent modules share, from a layer's parameters."""
    return {
        "input_size": int(params["input_size"]),
        "hidden_size": int(params["hidden_size"]),
        "num_layers": int(params["num_layers"]),
        "bidirectional": bool(params["bidirectional"]),
        "bias": bool(params["bias"]),
    }


def torch_layout_fields(kind: str) -> dict[str, Any]:
    """The ``LayerSpec`` fields of a layer in ``torch.nn.<kind>``'s layout (RNN, GRU, LSTM).

    Its weights, the sizes they imply, its reference (``torch.nn.<kind>`` itself),
    its flops, batch dim and precisions: what the recurrent plugins would
    otherwise each write out, as ``LayerSpec(name=..., **torch_layout_fields("GRU"))``.
    """
    gates = GATES[kind]
    return {
        "weights": lambda params: torch_layout_weights(params, gates),
        "reference": torch_reference(kind),
        # The two matmuls per step and layer; the gates' elementwise work is a rounding error.
        "flops": lambda params, dims: matmul_flops(torch_layout_weights(params, gates), dims),
        "batch_dim": "batch",
        "precisions": ALL_PRECISIONS,
        "params_from_weights": lstm_sizes if kind == "LSTM" else torch_layout_sizes,
    }


def matmul_flops(weights: Mapping[str, tuple[int, ...]], dims: Dims) -> int:
    per_step = sum(2 * shape[0] * shape[1] for shape in weights.values() if len(shape) == 2)
    return dims["batch"] * dims["seq"] * per_step


def torch_reference(kind: str) -> Callable[[Any], Callable[..., Any]]:
    """A reference factory: ``torch.nn.<kind>`` itself, holding the module's weights."""

    def reference(module: Any) -> Callable[..., Any]:
        import torch

        options: dict[str, Any] = {"nonlinearity": module.nonlinearity} if kind == "RNN" else {}
        if module.proj_size:
            options["proj_size"] = module.proj_size
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
        # The layer's module says how its inputs map onto torch's call.
        return module.reference_call(twin)

    return reference

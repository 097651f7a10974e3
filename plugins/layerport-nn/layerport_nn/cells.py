"""``lstm_cell`` and ``gru_cell``: one step of ``torch.nn.LSTMCell`` and ``GRUCell``.

State in, state out: a caller streams a sequence by feeding each step's ``h1``
(and ``c1``) back as the next step's ``h0`` (and ``c0``). The modules are
torch's own cells, so ``weight_ih``, ``weight_hh``, ``bias_ih`` and
``bias_hh`` load from a checkpoint as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport.plugin import InvalidParameter, LayerSpec, Param, Params, ParamValue, Tensor
from layerport_nn.common import BATCH

if TYPE_CHECKING:
    import torch
    from torch import nn

_PARAMS = (
    Param("input_size", int, 8, "features per step", minimum=1),
    Param("hidden_size", int, 16, "size of the state", minimum=1),
    Param("bias", bool, True, "learn the biases bias_ih and bias_hh"),
)


def _weights(gates: int) -> Callable[[Params], dict[str, tuple[int, ...]]]:
    def weights(params: Params) -> dict[str, tuple[int, ...]]:
        hidden, size = int(params["hidden_size"]), int(params["input_size"])
        shapes: dict[str, tuple[int, ...]] = {
            "weight_ih": (gates * hidden, size),
            "weight_hh": (gates * hidden, hidden),
        }
        if params["bias"]:
            shapes |= {"bias_ih": (gates * hidden,), "bias_hh": (gates * hidden,)}
        return shapes

    return weights


def _from_weights(
    gates: int, cell: str
) -> Callable[[Mapping[str, tuple[int, ...]]], dict[str, ParamValue]]:
    def params_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
        """``weight_ih`` is ``(gates * hidden_size, input_size)``, ``weight_hh`` ``(gates * hidden_size, hidden_size)``.

        An ``LSTMCell`` and a ``GRUCell`` share their key names: ``weight_hh``'s
        rows per column tell them apart, and a cell of the other kind is
        refused naming the tensor, its shape and the shape this one needs (so a
        prefix holding the other kind is not offered as one that fits).
        """
        rows, input_size = shapes["weight_ih"]
        # weight_hh's own shape says the kind: (gates * hidden_size, hidden_size).
        hh_rows, hh_columns = shapes["weight_hh"]
        if hh_rows != gates * hh_columns:
            raise InvalidParameter(
                f"weight_hh has shape {_shape(shapes['weight_hh'])}: not a torch.nn.{cell}'s, "
                f"which is ({gates} * hidden_size, hidden_size)"
            )
        hidden_size = rows // gates
        return {"hidden_size": hidden_size, "input_size": input_size, "bias": "bias_ih" in shapes}

    return params_from_weights


def _shape(shape: tuple[int, ...]) -> str:
    return f"({', '.join(str(size) for size in shape)})"


def _build_lstm_cell(params: Params) -> nn.Module:
    from torch import nn

    class LSTMStep(nn.LSTMCell):
        """``nn.LSTMCell`` with the state as two optional inputs and two outputs."""

        def forward(  # type: ignore[override]
            self, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            h1, c1 = super().forward(x, (zeros if h0 is None else h0, zeros if c0 is None else c0))
            return h1, c1

    return LSTMStep(int(params["input_size"]), int(params["hidden_size"]), bool(params["bias"]))


def _build_gru_cell(params: Params) -> nn.Module:
    from torch import nn

    class GRUStep(nn.GRUCell):
        """``nn.GRUCell`` with the state as an optional input and an output."""

        def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
            return super().forward(x, h0)

    return GRUStep(int(params["input_size"]), int(params["hidden_size"]), bool(params["bias"]))


def _affine(module: Any, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x W_ih^T + b_ih`` and ``h W_hh^T + b_hh``, the gates' two halves."""
    into = x @ module.weight_ih.T
    back = h @ module.weight_hh.T
    if module.bias:
        into, back = into + module.bias_ih, back + module.bias_hh
    return into, back


def _lstm_reference(module: Any) -> Callable[..., Any]:
    """torch's LSTMCell equations (gates i, f, g, o in that order), written out."""
    import torch

    def reference(
        x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = x.new_zeros(x.shape[0], module.hidden_size)
        h = zeros if h0 is None else h0
        c = zeros if c0 is None else c0
        into, back = _affine(module, x, h)
        i, f, g, o = (into + back).chunk(4, dim=1)
        c1 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c1), c1

    return reference


def _gru_reference(module: Any) -> Callable[..., Any]:
    """torch's GRUCell equations (gates r, z, n in that order), written out."""
    import torch

    def reference(x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], module.hidden_size) if h0 is None else h0
        into, back = _affine(module, x, h)
        into_r, into_z, into_n = into.chunk(3, dim=1)
        back_r, back_z, back_n = back.chunk(3, dim=1)
        r, z = torch.sigmoid(into_r + back_r), torch.sigmoid(into_z + back_z)
        n = torch.tanh(into_n + r * back_n)
        return (1 - z) * n + z * h

    return reference


_STATE = ("batch", "hidden_size")

LSTM_CELL = LayerSpec(
    name="lstm_cell",
    description="torch.nn.LSTMCell: one step, x and the state (h0, c0) in, the next state (h1, c1) out.",
    build=_build_lstm_cell,
    weights=_weights(4),
    params=_PARAMS,
    dims=(BATCH,),
    inputs=(
        Tensor("x", ("batch", "input_size"), "this step's input"),
        Tensor("h0", _STATE, "hidden state; zeros if omitted", optional=True),
        Tensor("c0", _STATE, "cell state; zeros if omitted", optional=True),
    ),
    outputs=(
        Tensor("h1", _STATE, "next hidden state (the step's output)"),
        Tensor("c1", _STATE, "next cell state"),
    ),
    reference=_lstm_reference,
    batch_dim="batch",
    params_from_weights=_from_weights(4, "LSTMCell"),
)
GRU_CELL = LayerSpec(
    name="gru_cell",
    description="torch.nn.GRUCell: one step, x and the state h0 in, the next state h1 out.",
    build=_build_gru_cell,
    weights=_weights(3),
    params=_PARAMS,
    dims=(BATCH,),
    inputs=(
        Tensor("x", ("batch", "input_size"), "this step's input"),
        Tensor("h0", _STATE, "hidden state; zeros if omitted", optional=True),
    ),
    outputs=(Tensor("h1", _STATE, "next hidden state (the step's output)"),),
    reference=_gru_reference,
    batch_dim="batch",
    params_from_weights=_from_weights(3, "GRUCell"),
)

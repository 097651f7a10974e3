"""The torch modules behind the built-in layer types.

Imported only by the builders, so that listing and showing layers never imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

from layerport.eager.recurrence import run_over_time, run_stacked

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "none": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


class Linear(nn.Linear):
    """``nn.Linear`` followed by an activation; the weights stay ``weight`` and ``bias``."""

    def __init__(self, in_features: int, out_features: int, bias: bool, activation: str) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))


class ElmanRNN(nn.Module):
    """The seed notebook's Elman RNN: ``h_t = act(wi(x_t) + wh(h_{t-1}))``, ``y_t = wo(h_t)``.

    The recurrence goes through ``layerport.eager.recurrence.run_over_time``, which
    exports as one ONNX ``Scan`` so that every sequence length works. ``wi`` and
    both biases do not depend on the recurrence, so they are applied to the whole
    sequence at once, outside the loop: each step is one fused multiply-add.
    """

    def __init__(
        self, input_size: int, hidden_size: int, output_size: int, nonlinearity: str, bias: bool
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        self.wi = nn.Linear(input_size, hidden_size, bias=bias)
        self.wh = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.wo = nn.Linear(hidden_size, output_size, bias=bias)
        self.act = torch.tanh if nonlinearity == "tanh" else torch.relu

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if h0 is None:
            h0 = x.new_zeros(x.shape[0], self.hidden_size)
        bias = None if self.wi.bias is None else self.wi.bias + self.wh.bias
        projected = nn.functional.linear(x, self.wi.weight, bias)
        (h_n,), hidden = run_over_time(self._cell, (h0,), projected)
        return self.wo(hidden), h_n

    def _cell(
        self, state: tuple[torch.Tensor, ...], projected_t: torch.Tensor
    ) -> tuple[torch.Tensor]:
        (h,) = state
        return (self.act(torch.addmm(projected_t, h, self.wh.weight.t())),)


class LSTM(nn.LSTM):
    """``torch.nn.LSTM(batch_first=True)``, returning ``(y, h_n, c_n)``; states default to zeros.

    Exported in float32 it stays ``nn.LSTM``, which torch.onnx turns into the ONNX
    ``LSTM`` op: the fastest form in onnxruntime, and one TensorRT and OpenVINO
    accelerate. onnxruntime 1.32 has no double ``LSTM`` kernel, so in float64 the
    same function exports through ``run_stacked`` as ONNX ``Scan``. Verification
    holds each form to ``nn.LSTM``'s own result, over the grid.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, bias: bool
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=True,
            bidirectional=bidirectional,
        )

    def state_shape(self, batch: int) -> tuple[int, int, int]:
        return (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h0 = x.new_zeros(self.state_shape(x.shape[0])) if h0 is None else h0
        c0 = x.new_zeros(self.state_shape(x.shape[0])) if c0 is None else c0
        if torch.compiler.is_exporting() and x.dtype == torch.float64:
            (h_n, c_n), y = run_stacked(
                self._cell,
                self._project,
                (h0, c0),
                x,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
            )
            return y, h_n, c_n
        y, (h_n, c_n) = super().forward(x, (h0, c0))
        return y, h_n, c_n

    def _weights(self, index: int, kind: str) -> torch.Tensor | None:
        layer, direction = divmod(index, 2 if self.bidirectional else 1)
        suffix = "_reverse" if direction else ""
        return getattr(self, f"{kind}_l{layer}{suffix}", None)

    def _project(self, index: int, layer_input: torch.Tensor) -> torch.Tensor:
        bias_ih, bias_hh = self._weights(index, "bias_ih"), self._weights(index, "bias_hh")
        bias = None if bias_ih is None or bias_hh is None else bias_ih + bias_hh
        weight = self._weights(index, "weight_ih")
        assert weight is not None
        return nn.functional.linear(layer_input, weight, bias)

    def _cell(
        self, index: int, state: tuple[torch.Tensor, ...], projected_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step with nn.LSTM's gate order (input, forget, cell, output)."""
        h, c = state
        weight = self._weights(index, "weight_hh")
        assert weight is not None
        gates = torch.addmm(projected_t, h, weight.t())
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
        c_next = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
        return torch.sigmoid(output_gate) * torch.tanh(c_next), c_next

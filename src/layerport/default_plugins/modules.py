"""The torch modules behind the built-in layer types.

Imported only by the builders, so that listing and showing layers never imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

from layerport.eager.recurrence import run_over_time

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

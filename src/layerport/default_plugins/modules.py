"""The torch modules behind the built-in layer types.

Imported only by the builders, so that listing and showing layers never imports torch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

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

    When exported, the recurrence runs through ``torch._higher_order_ops.scan``.
    torch.onnx traces a Python loop over time (and ``nn.RNN``) by unrolling it to
    the example's length, which pins the sequence dim; ``scan`` exports as one
    ONNX ``Scan`` node whose body is a single step, so the file's size does not
    depend on the sequence length and every length works. In eager mode the same
    step runs in a plain loop: eager ``scan`` compiles itself on every new length
    and ran 2-3x slower than the loop even when warm. Verification proves that
    the two paths agree. ``wi`` does not depend on the recurrence, so it is
    applied to the whole sequence at once, as one large matmul, outside the loop.
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
        # Both biases are added once, to the hoisted projection, so each step is a
        # single fused multiply-add (one ONNX Gemm in the Scan body).
        bias = None if self.wi.bias is None else self.wi.bias + self.wh.bias
        projected = nn.functional.linear(x, self.wi.weight, bias)
        if torch.compiler.is_exporting():
            h_n, hidden = scan(self._step, h0, projected, dim=1)
        else:
            h_n, hidden = self._loop(h0, projected)
        return self.wo(hidden), h_n

    def _cell(self, h: torch.Tensor, projected_t: torch.Tensor) -> torch.Tensor:
        return self.act(torch.addmm(projected_t, h, self.wh.weight.t()))

    def _step(
        self, h: torch.Tensor, projected_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h_next = self._cell(h, projected_t)
        return h_next, h_next.clone()  # scan forbids a carry that aliases an output

    def _loop(self, h: torch.Tensor, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = []
        for t in range(projected.shape[1]):
            h = self._cell(h, projected[:, t])
            states.append(h)
        return h, torch.stack(states, dim=1)

"""The torch module behind the ``gru`` layer type.

Imported only by the builder, so that listing and showing layers never imports torch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from layerport.eager.recurrence import run_over_time


class GRU(nn.Module):
    """``torch.nn.GRU`` (one layer, ``batch_first``) written out step by step.

    ``nn.GRU`` cannot be exported with a dynamic sequence length: torch.onnx
    unrolls its recurrence to the traced length. ``layerport.eager.recurrence``'s
    ``run_over_time`` exports as one ONNX ``Scan`` instead, so every length works.
    The input projection does not depend on the recurrence, so it is one large
    matmul outside the loop.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        # Draw the weights as nn.GRU does, from the caller's seeded generator,
        # so a layerport seed gives the weights nn.GRU would have under it.
        initial = nn.GRU(input_size, hidden_size, bias=bias, batch_first=True).state_dict()
        self.weight_ih = nn.Parameter(initial["weight_ih_l0"])
        self.weight_hh = nn.Parameter(initial["weight_hh_l0"])
        self.bias_ih = nn.Parameter(initial["bias_ih_l0"]) if bias else None
        self.bias_hh = nn.Parameter(initial["bias_hh_l0"]) if bias else None

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if h0 is None:
            h0 = x.new_zeros(x.shape[0], self.hidden_size)
        projected = functional.linear(x, self.weight_ih, self.bias_ih)
        (h_n,), y = run_over_time(self._cell, (h0,), projected)
        return y, h_n

    def _cell(
        self, state: tuple[torch.Tensor, ...], projected_t: torch.Tensor
    ) -> tuple[torch.Tensor]:
        """One step, with nn.GRU's gate order (reset, update, new) in each 3H block."""
        (h,) = state
        input_r, input_z, input_n = projected_t.chunk(3, dim=-1)
        hidden_r, hidden_z, hidden_n = functional.linear(h, self.weight_hh, self.bias_hh).chunk(
            3, dim=-1
        )
        reset = torch.sigmoid(input_r + hidden_r)
        update = torch.sigmoid(input_z + hidden_z)
        new = torch.tanh(input_n + reset * hidden_n)
        # (1 - update) * new + update * h, in the form ATen's GRU cell computes it.
        return (new + update * (h - new),)

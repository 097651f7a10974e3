"""The torch module behind the ``gru`` layer type.

Imported only by the builder, so that listing and showing layers never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from layerport.plugin import run_stacked, torch_state_shape, torch_weight


class GRU(nn.GRU):
    """``torch.nn.GRU(batch_first=True)``, returning ``(y, h_n)``; ``h0`` defaults to zeros.

    Exported in float32 it stays ``nn.GRU``, which torch.onnx turns into the ONNX
    ``GRU`` op (``linear_before_reset``, as torch computes it). onnxruntime 1.32
    has float32 ``GRU`` kernels only, so in float64, float16 and bfloat16 the same function exports
    through ``layerport.eager.recurrence.run_stacked`` as ONNX ``Scan``.
    Verification holds each form to ``nn.GRU``'s own result.
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

    def reference_call(self, twin: nn.GRU) -> Callable[..., tuple[torch.Tensor, ...]]:
        """``twin`` (an ``nn.GRU``) called with this layer's inputs and outputs."""
        return lambda x, h0=None: tuple(twin(x, h0))

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h0 = x.new_zeros(torch_state_shape(self, x.shape[0])) if h0 is None else h0
        if torch.compiler.is_exporting() and x.dtype != torch.float32:
            (h_n,), y = run_stacked(
                self._cell,
                self._project,
                (h0,),
                x,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
            )
            return y, h_n
        y, h_n = super().forward(x, h0)
        return y, h_n

    def _project(self, index: int, layer_input: torch.Tensor) -> torch.Tensor:
        # Only bias_ih folds into the projection: bias_hh's new-gate third sits inside
        # reset * (...), as nn.GRU computes it.
        bias = torch_weight(self, index, "bias_ih") if self.bias else None
        return functional.linear(layer_input, torch_weight(self, index, "weight_ih"), bias)

    def _cell(
        self, index: int, state: tuple[torch.Tensor, ...], projected_t: torch.Tensor
    ) -> tuple[torch.Tensor]:
        """One step, with nn.GRU's gate order (reset, update, new) in each 3H block."""
        (h,) = state
        bias = torch_weight(self, index, "bias_hh") if self.bias else None
        hidden = functional.linear(h, torch_weight(self, index, "weight_hh"), bias)
        input_r, input_z, input_n = projected_t.chunk(3, dim=-1)
        hidden_r, hidden_z, hidden_n = hidden.chunk(3, dim=-1)
        reset = torch.sigmoid(input_r + hidden_r)
        update = torch.sigmoid(input_z + hidden_z)
        new = torch.tanh(input_n + reset * hidden_n)
        # (1 - update) * new + update * h, in the form ATen's GRU cell computes it.
        return (new + update * (h - new),)

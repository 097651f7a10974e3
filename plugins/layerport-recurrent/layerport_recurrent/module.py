"""The torch modules behind layerport-recurrent's layer types.

Imported only by the builders, so that listing and showing layers never imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from layerport.plugin import run_stacked, torch_projection, torch_state_shape, torch_weight


class LSTM(nn.LSTM):
    """``torch.nn.LSTM(batch_first=True)``, returning ``(y, h_n, c_n)``; states default to zeros.

    Exported in float32 it stays ``nn.LSTM``, which torch.onnx turns into the ONNX
    ``LSTM`` op: the fastest form in onnxruntime, and one TensorRT and OpenVINO
    accelerate. onnxruntime 1.32 has float32 ``LSTM`` kernels only, and the ONNX
    op has no projection, so in every other precision, and with ``proj_size``,
    the same function exports through ``run_stacked`` as ONNX ``Scan``.
    Verification holds each form to ``nn.LSTM``'s own result, over the grid.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        bias: bool,
        proj_size: int = 0,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=True,
            bidirectional=bidirectional,
            proj_size=proj_size,
        )

    def reference_call(self, twin: nn.LSTM) -> Callable[..., tuple[torch.Tensor, ...]]:
        """``twin`` (an ``nn.LSTM``) called with this layer's inputs and outputs."""

        def run(
            x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, ...]:
            state = None
            if h0 is not None or c0 is not None:
                state = self._initial_states(x, h0, c0)
            y, (h_n, c_n) = twin(x, state)
            return y, h_n, c_n

        return run

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h0, c0 = self._initial_states(x, h0, c0)
        if torch.compiler.is_exporting() and (x.dtype != torch.float32 or self.proj_size):
            (h_n, c_n), y = run_stacked(
                self._cell,
                functools.partial(torch_projection, self),
                (h0, c0),
                x,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
            )
            return y, h_n, c_n
        y, (h_n, c_n) = super().forward(x, (h0, c0))
        return y, h_n, c_n

    def _initial_states(
        self, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h0`` and ``c0``, zeros where omitted; with ``proj_size`` their widths differ."""
        batch = x.shape[0]
        h0 = x.new_zeros(torch_state_shape(self, batch)) if h0 is None else h0
        c0 = x.new_zeros(torch_state_shape(self, batch, cell=True)) if c0 is None else c0
        return h0, c0

    def _cell(
        self, index: int, state: tuple[torch.Tensor, ...], projected_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step with nn.LSTM's gate order (input, forget, cell, output)."""
        h, c = state
        gates = torch.addmm(projected_t, h, torch_weight(self, index, "weight_hh").t())
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
        c_next = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
        h_next = torch.sigmoid(output_gate) * torch.tanh(c_next)
        if self.proj_size:
            h_next = h_next @ torch_weight(self, index, "weight_hr").t()
        return h_next, c_next


class StackedElman(nn.RNN):
    """``torch.nn.RNN(batch_first=True)``, returning ``(y, h_n)``; ``h0`` defaults to zeros.

    Eager, it is ``nn.RNN`` itself. Exporting, it runs through ``run_stacked``:
    torch.onnx unrolls ``nn.RNN`` (210 nodes for two bidirectional layers) and
    pins the sequence length, and onnxruntime's ``RNN`` op ran 2x slower than
    eager torch. Verification holds the ``Scan`` export to ``nn.RNN``'s result.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        nonlinearity: str,
        bias: bool,
        bidirectional: bool,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            nonlinearity=nonlinearity,
            bias=bias,
            batch_first=True,
            bidirectional=bidirectional,
        )
        self.act = torch.tanh if nonlinearity == "tanh" else torch.relu

    def reference_call(self, twin: nn.RNN) -> Callable[..., tuple[torch.Tensor, ...]]:
        """``twin`` (an ``nn.RNN``) called with this layer's inputs and outputs."""
        return lambda x, h0=None: tuple(twin(x, h0))

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h0 = x.new_zeros(torch_state_shape(self, x.shape[0])) if h0 is None else h0
        if not torch.compiler.is_exporting():
            return super().forward(x, h0)
        (h_n,), y = run_stacked(
            self._cell,
            functools.partial(torch_projection, self),
            (h0,),
            x,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
        )
        return y, h_n

    def _cell(
        self, index: int, state: tuple[torch.Tensor, ...], projected_t: torch.Tensor
    ) -> tuple[torch.Tensor]:
        weight = torch_weight(self, index, "weight_hh")
        return (self.act(torch.addmm(projected_t, state[0], weight.t())),)

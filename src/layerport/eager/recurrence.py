"""Recurrence over a dynamic sequence dim that exports with every length intact.

torch.onnx traces a Python loop over time (and ``nn.RNN``/``nn.GRU``) by
unrolling it to the example's length, which pins the sequence dim. Under export
``run_over_time`` uses ``torch._higher_order_ops.scan`` instead: one ONNX ``Scan``
node whose body is a single step, so the file's size does not depend on the
length and every length works. In eager mode the same step runs in a plain loop:
eager ``scan`` compiles itself for every new length and ran 2-3x slower than the
loop even when warm. Verification proves that the two paths agree.

Plugin authors writing recurrent layers call this rather than looping themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._higher_order_ops.scan import scan

Cell = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def run_over_time(
    cell: Cell, h0: torch.Tensor, inputs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``h_t = cell(h_{t-1}, inputs[:, t])`` along dim 1 (batch first).

    Returns the last state and every state, stacked along dim 1. Hoist whatever
    does not depend on the state (an input projection) out of ``cell`` and into
    ``inputs``: it then runs as one large matmul over the whole sequence.
    """
    if torch.compiler.is_exporting():

        def step(h: torch.Tensor, input_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h_next = cell(h, input_t)
            return h_next, h_next.clone()  # scan forbids a carry that aliases an output

        last, states = scan(step, h0, inputs, dim=1)
        return last, states
    h, collected = h0, []
    for t in range(inputs.shape[1]):
        h = cell(h, inputs[:, t])
        collected.append(h)
    return h, torch.stack(collected, dim=1)

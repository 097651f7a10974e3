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

State = tuple[torch.Tensor, ...]
Cell = Callable[[State, torch.Tensor], State]


def run_over_time(
    cell: Cell, state: State, inputs: torch.Tensor, *, reverse: bool = False
) -> tuple[State, torch.Tensor]:
    """Apply ``state_t = cell(state_{t-1}, inputs[:, t])`` along dim 1 (batch first).

    ``state`` is a tuple of tensors: ``(h,)`` for an Elman RNN or a GRU,
    ``(h, c)`` for an LSTM. ``cell(state, input_t)`` returns the next state, a
    tuple of the same shapes. With ``reverse`` the steps run from the last time
    step to the first, as the backward direction of a bidirectional layer does.

    Returns ``(last_state, outputs)``: the state after the last step taken, and
    the first state tensor (the hidden state) of every step, stacked along dim 1
    in time order whichever way the steps ran. Hoist whatever does not depend on
    the state (an input projection) out of ``cell`` and into ``inputs``: it then
    runs as one large matmul over the whole sequence.
    """
    if torch.compiler.is_exporting():

        def step(carry: State, input_t: torch.Tensor) -> tuple[State, torch.Tensor]:
            next_state = tuple(cell(carry, input_t))
            return next_state, next_state[0].clone()  # scan forbids a carry aliasing an output

        last, outputs = scan(step, tuple(state), inputs, dim=1, reverse=reverse)
        return tuple(last), outputs
    steps = range(inputs.shape[1])
    collected: list[torch.Tensor] = []
    for t in reversed(steps) if reverse else steps:
        state = tuple(cell(state, inputs[:, t]))
        collected.append(state[0])
    if reverse:
        collected.reverse()
    return state, torch.stack(collected, dim=1)


def run_stacked(
    cell: Callable[[int, State, torch.Tensor], State],
    project: Callable[[int, torch.Tensor], torch.Tensor],
    state: State,
    inputs: torch.Tensor,
    *,
    num_layers: int,
    bidirectional: bool,
) -> tuple[State, torch.Tensor]:
    """A stacked, optionally bidirectional recurrence, in torch's layout and order.

    As ``torch.nn.RNN``, ``GRU`` and ``LSTM`` do: layer ``l`` reads layer
    ``l - 1``'s outputs (both directions concatenated on the last dim), and the
    state tensors hold one slice per layer and direction, index
    ``l * directions + d`` (``d`` 1 runs backwards). ``project(index, layer_input)``
    gives one layer and direction's input projection, hoisted out of the loop;
    ``cell(index, state, projected_t)`` is its step, as ``run_over_time`` takes it.

    Returns ``(last_state, outputs)``: each state tensor stacked back to
    ``(layers * directions, batch, ...)``, and the last layer's outputs
    ``(batch, seq, directions * hidden)``.
    """
    directions = 2 if bidirectional else 1
    finals: list[State] = []
    layer_input = inputs
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction

            def step(carry: State, projected_t: torch.Tensor, index: int = index) -> State:
                return cell(index, carry, projected_t)

            initial = tuple(tensor[index] for tensor in state)
            final, output = run_over_time(
                step, initial, project(index, layer_input), reverse=direction == 1
            )
            finals.append(final)
            outputs.append(output)
        layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
    stacked = tuple(torch.stack([final[i] for final in finals]) for i in range(len(state)))
    return stacked, layer_input


def torch_state_shape(
    module: torch.nn.RNNBase, batch: int, *, cell: bool = False
) -> tuple[int, int, int]:
    """torch's state layout for ``module``: (num_layers x directions, batch, size).

    ``size`` is ``hidden_size``, except for the hidden state of an LSTM with
    ``proj_size > 0``: ``proj_size``. Its cell state (``cell=True``) stays ``hidden_size``.
    """
    directions = 2 if module.bidirectional else 1
    size = module.proj_size if module.proj_size and not cell else module.hidden_size
    return (module.num_layers * directions, batch, size)


def torch_weight(module: torch.nn.RNNBase, index: int, kind: str) -> torch.Tensor:
    """One layer and direction's tensor, by ``nn.RNN``/``LSTM``'s key (``weight_hh_l1_reverse``).

    ``index`` is ``layer * directions + direction``, as ``run_stacked`` counts.
    """
    layer, direction = divmod(index, 2 if module.bidirectional else 1)
    tensor = getattr(module, f"{kind}_l{layer}{'_reverse' if direction else ''}")
    assert isinstance(tensor, torch.Tensor)
    return tensor


def torch_projection(
    module: torch.nn.RNNBase, index: int, layer_input: torch.Tensor
) -> torch.Tensor:
    """``layer_input @ weight_ih.T + bias_ih + bias_hh``: the step-independent part, hoisted."""
    bias = None
    if module.bias:
        bias = torch_weight(module, index, "bias_ih") + torch_weight(module, index, "bias_hh")
    return torch.nn.functional.linear(layer_input, torch_weight(module, index, "weight_ih"), bias)

"""``run_over_time`` and ``run_stacked`` against plain loops and torch's own recurrences."""

from __future__ import annotations

import pytest
import torch

from layerport.eager.recurrence import run_over_time, run_stacked


def _cell(state: tuple[torch.Tensor, ...], x_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h, c = state
    h_next = torch.tanh(x_t + h)
    return h_next, c + h_next


@pytest.mark.parametrize("reverse", [False, True])
def test_run_over_time_carries_several_tensors_either_way(reverse: bool) -> None:
    x, h0 = torch.randn(2, 6, 3), torch.randn(2, 3)
    (h, c), outputs = run_over_time(_cell, (h0, torch.zeros(2, 3)), x, reverse=reverse)
    expected_h, expected_c, steps = h0, torch.zeros(2, 3), [torch.empty(0)] * 6
    for t in reversed(range(6)) if reverse else range(6):
        expected_h, expected_c = _cell((expected_h, expected_c), x[:, t])
        steps[t] = expected_h
    torch.testing.assert_close(h, expected_h)
    torch.testing.assert_close(c, expected_c)
    torch.testing.assert_close(outputs, torch.stack(steps, dim=1))  # in time order


@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (2, True), (3, False)])
def test_run_stacked_is_torch_rnn(num_layers: int, bidirectional: bool) -> None:
    rnn = torch.nn.RNN(4, 5, num_layers=num_layers, bidirectional=bidirectional, batch_first=True)
    directions = 2 if bidirectional else 1
    x, h0 = torch.randn(3, 7, 4), torch.randn(num_layers * directions, 3, 5)

    def weights(index: int, kind: str) -> torch.Tensor:
        layer, direction = divmod(index, directions)
        return getattr(rnn, f"{kind}_l{layer}{'_reverse' if direction else ''}")

    def project(index: int, layer_input: torch.Tensor) -> torch.Tensor:
        bias = weights(index, "bias_ih") + weights(index, "bias_hh")
        return torch.nn.functional.linear(layer_input, weights(index, "weight_ih"), bias)

    def cell(index: int, state: tuple[torch.Tensor, ...], projected_t: torch.Tensor):  # type: ignore[no-untyped-def]
        return (torch.tanh(projected_t + state[0] @ weights(index, "weight_hh").t()),)

    with torch.no_grad():
        (h_n,), y = run_stacked(
            cell, project, (h0,), x, num_layers=num_layers, bidirectional=bidirectional
        )
        expected_y, expected_h = rnn(x, h0)
    torch.testing.assert_close(y, expected_y)
    torch.testing.assert_close(h_n, expected_h)

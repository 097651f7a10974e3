"""Train the small layers whose weights tests/data/*.safetensors hold.

Trained weights are not random ones: training pulls a recurrence towards long
memory (gates near 1) and a convolution towards large, correlated taps, which
is where float32 rounding grows with the sequence. Each layer trains for 300
Adam steps on a task that needs memory, on CPU, from a fixed seed:

    .venv/bin/python tests/data/train_weights.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

STEPS = 300
HERE = Path(__file__).parent


def _running_task(batch: int, seq: int, features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs, and as target the running mean of their first feature (needs memory)."""
    x = torch.randn(batch, seq, features)
    steps = torch.arange(1, seq + 1).view(1, seq, 1)
    return x, torch.cumsum(x[..., :1], dim=1) / steps.sqrt()


def train_recurrent(kind: str, input_size: int, hidden_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    layer = getattr(nn, kind)(input_size, hidden_size, batch_first=True)
    head = nn.Linear(hidden_size, 1)
    optimizer = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(STEPS):
        x, target = _running_task(16, 64, input_size)
        loss = nn.functional.mse_loss(head(layer(x)[0]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: tensor.detach().contiguous() for name, tensor in layer.state_dict().items()}


def train_conv1d(in_channels: int, out_channels: int, kernel_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(STEPS):
        x = torch.randn(16, in_channels, 64)
        # A smoothed sum over channels: every tap and channel matters.
        target = nn.functional.avg_pool1d(
            x.sum(dim=1, keepdim=True), kernel_size, stride=1, padding=kernel_size // 2
        ).repeat(1, out_channels, 1)
        loss = nn.functional.mse_loss(layer(x), target * 3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: tensor.detach().contiguous() for name, tensor in layer.state_dict().items()}


def main() -> None:
    save_file(train_recurrent("GRU", 32, 48), HERE / "trained_gru.safetensors")
    save_file(train_recurrent("LSTM", 32, 32), HERE / "trained_lstm.safetensors")
    save_file(train_conv1d(64, 32, 7), HERE / "trained_conv1d.safetensors")


if __name__ == "__main__":
    main()

"""The torch module behind the ``mlp`` layer type.

Imported only by the builder, so that listing and showing layers never imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

# SiLU rather than GELU: exact GELU exports as ONNX Erf, which onnxruntime has no
# float64 kernel for, and the tanh approximation's constants are rounded to
# float32 by the exporter even in a float64 graph. Verification caught both.
_ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """``fc2(activation(norm(fc1(x))))``, applied to every token independently."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int, activation: str, eps: float
    ) -> None:
        super().__init__()
        self.activation_name = activation
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.norm = nn.LayerNorm(hidden_features, eps=eps)
        self.activation = _ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.norm(self.fc1(x))))

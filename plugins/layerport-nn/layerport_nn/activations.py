"""``activation`` (one of torch's, chosen by name) and ``dropout`` (identity at inference).

Neither holds weights. Softmax and log-softmax normalize over a named dim of
the input, not an axis number, so the choice reads the same in a model file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerport.plugin import LayerSpec, Param, Params, Tensor
from layerport_nn.common import BATCH, SEQ, TOKENS

if TYPE_CHECKING:
    import torch
    from torch import nn

FUNCTIONS = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax")


def _axis(params: Params) -> int:
    return TOKENS.index(str(params["dim"]))


def _build_activation(params: Params) -> nn.Module:
    from torch import nn

    function = str(params["function"])
    if function == "leaky_relu":
        return _leaky_relu(float(params["negative_slope"]))
    if function == "softmax":
        return nn.Softmax(dim=_axis(params))
    if function == "log_softmax":
        return nn.LogSoftmax(dim=_axis(params))
    modules: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }
    return modules[function]()


def _leaky_relu(negative_slope: float) -> nn.Module:
    """``nn.LeakyReLU`` with its slope exact in a float64 file.

    torch.onnx writes LeakyRelu's slope, and any Python number in ``forward``,
    as float32, even in a float64 graph: verification found float64 files off
    by 8e-10. Held as a float64 tensor (a buffer outside the state dict), the
    slope converts with the module to the file's precision.
    """
    import torch
    from torch import nn

    class LeakyReLU(nn.LeakyReLU):
        def __init__(self) -> None:
            super().__init__(negative_slope)
            slope = torch.tensor(negative_slope, dtype=torch.float64)
            self.register_buffer("slope", slope, persistent=False)

        slope: torch.Tensor

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x > 0, x, x * self.slope)

    return LeakyReLU()


def _activation_reference(module: Any) -> Callable[..., Any]:
    """The same function written with ``torch`` primitives, from the module's settings."""
    import math

    import torch

    name = type(module).__name__

    def softmax(x: torch.Tensor) -> torch.Tensor:
        shifted = x - x.amax(dim=module.dim, keepdim=True)
        return shifted.exp() / shifted.exp().sum(dim=module.dim, keepdim=True)

    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "ReLU": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
        "LeakyReLU": lambda x: torch.where(x > 0, x, x * getattr(module, "negative_slope", 0.0)),
        "GELU": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0))),
        "SiLU": lambda x: x / (1 + torch.exp(-x)),
        "Tanh": lambda x: 1 - 2 / (torch.exp(2 * x) + 1),
        "Sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
        "Softmax": softmax,
        "LogSoftmax": lambda x: softmax(x).log(),
    }
    return functions[name]


ACTIVATION = LayerSpec(
    name="activation",
    description="An activation of torch.nn by name (relu, gelu, softmax over a named dim...).",
    build=_build_activation,
    weights=lambda params: {},
    params=(
        Param("features", int, 16, "size of the last dim", minimum=1),
        Param("function", str, "relu", "the activation", choices=FUNCTIONS),
        Param(
            "dim", str, "features", "the dim softmax and log_softmax normalize over", choices=TOKENS
        ),
        Param("negative_slope", float, 0.01, "leaky_relu's slope below zero"),
    ),
    dims=(BATCH, SEQ),
    inputs=(Tensor("x", TOKENS, "input"),),
    outputs=(Tensor("y", TOKENS, "activated input"),),
    reference=_activation_reference,
    batch_dim="batch",
)


def _build_dropout(params: Params) -> nn.Module:
    from torch import nn

    return nn.Dropout(float(params["p"]))


DROPOUT = LayerSpec(
    name="dropout",
    description="torch.nn.Dropout at inference: the identity (p is kept for the record).",
    build=_build_dropout,
    weights=lambda params: {},
    params=(
        Param("features", int, 16, "size of the last dim", minimum=1),
        Param(
            "p",
            float,
            0.1,
            "the training-time drop probability; unused at inference",
            minimum=0.0,
            maximum=1.0,
        ),
    ),
    dims=(BATCH, SEQ),
    inputs=(Tensor("x", TOKENS, "input"),),
    outputs=(Tensor("y", TOKENS, "the input, unchanged"),),
    reference=lambda module: lambda x: x.clone(),
    batch_dim="batch",
)

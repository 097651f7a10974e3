"""``activation`` (one of torch's, chosen by name) and ``dropout`` (identity at inference).

Neither holds weights. Softmax and log-softmax normalize over a named dim of
the input, not an axis number, so the choice reads the same in a model file.

A spec's tensors have a fixed rank, so the activation comes in one layer type
per layout, all sharing this implementation: ``activation`` for tokens
(batch, seq, features), ``activation0d`` for rows (batch, features), what a
``linear`` gives; ``activation1d`` for channels-first sequences (batch,
channels, length), what a ``conv1d`` gives; ``activation2d`` for images
(batch, channels, height, width), what a ``conv2d`` gives. Each one's
softmax ``dim`` is one of its own layout's dims.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerport.plugin import Dim, LayerSpec, Param, Params, Tensor
from layerport_nn.common import BATCH, POSITIONWISE, SEQ, TOKENS

if TYPE_CHECKING:
    import torch
    from torch import nn

FUNCTIONS = ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax")


def _build_activation(layout: tuple[str, ...]) -> Callable[[Params], nn.Module]:
    def build(params: Params) -> nn.Module:
        from torch import nn

        function = str(params["function"])
        if function in ("softmax", "log_softmax"):
            axis = layout.index(str(params["dim"]))
            return nn.Softmax(dim=axis) if function == "softmax" else nn.LogSoftmax(dim=axis)
        return _function_module(function, float(params["negative_slope"]))

    return build


def _function_module(function: str, negative_slope: float) -> nn.Module:
    """An elementwise activation's module, by name."""
    from torch import nn

    if function == "leaky_relu":
        return _leaky_relu(negative_slope)
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


def activation_spec(
    name: str, layout: tuple[str, ...], size: str, size_help: str, *dims: Dim
) -> LayerSpec:
    """The activation over tensors of ``layout``, whose fixed dim is the parameter ``size``."""
    return LayerSpec(
        name=name,
        description=f"An activation of torch.nn by name (relu, gelu, softmax over a named dim...) "
        f"on ({', '.join(layout)}).",
        build=_build_activation(layout),
        weights=lambda params: {},
        params=(
            Param(size, int, 16 if size == "features" else 4, size_help, minimum=1),
            Param("function", str, "relu", "the activation", choices=FUNCTIONS),
            Param(
                "dim",
                str,
                size,
                "the dim softmax and log_softmax normalize over",
                choices=layout,
            ),
            Param("negative_slope", float, 0.01, "leaky_relu's slope below zero"),
        ),
        dims=(BATCH, *dims),
        inputs=(Tensor("x", layout, "input"),),
        outputs=(Tensor("y", layout, "activated input"),),
        reference=_activation_reference,
        batch_dim="batch",
    )


ACTIVATION = activation_spec("activation", TOKENS, "features", "size of the last dim", SEQ)
ACTIVATION0D = activation_spec(
    "activation0d", ("batch", "features"), "features", "size of each row"
)
ACTIVATION1D = activation_spec(
    "activation1d",
    ("batch", "channels", "length"),
    "channels",
    "channels per position",
    Dim("length", 16, "positions per sequence", check_size=41),
)
ACTIVATION2D = activation_spec(
    "activation2d",
    ("batch", "channels", "height", "width"),
    "channels",
    "channels per pixel",
    Dim("height", 8, "rows per image", check_size=21),
    Dim("width", 6, "columns per image", check_size=17),
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
    streaming=POSITIONWISE,
    inputs=(Tensor("x", TOKENS, "input"),),
    outputs=(Tensor("y", TOKENS, "the input, unchanged"),),
    reference=lambda module: lambda x: x.clone(),
    batch_dim="batch",
)

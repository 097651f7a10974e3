"""layerport-conv: ``torch.nn.Conv1d`` and ``Conv2d`` as layer types (torch-free specs).

A convolution's output length is a function of its input's length and four
parameters, ``(length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride
+ 1`` (torch's ``Conv1d`` documentation, "Shape"), and it has no output at all
below ``dilation * (kernel_size - 1) + 1 - 2 * padding``. Both are declared on the
spec as formulas: ``show`` prints them, the export names the output's dim by
its formula, and verification starts its grid at the smallest valid length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport.plugin import (
    Dim,
    Dims,
    InvalidParameter,
    LayerSpec,
    Param,
    Params,
    ParamValue,
    Tensor,
    evaluate,
    hookimpl,
    parse_formula,
)

if TYPE_CHECKING:
    from torch import nn

# torch's Conv1d/Conv2d "Shape" formula, per spatial dim.
OUTPUT = "({size} + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1"
# The smallest input that leaves one output position.
SMALLEST = "dilation * (kernel_size - 1) + 1 - 2 * padding"

# onnxruntime 1.32's CPU provider has a float32 Conv kernel only; onnx's
# reference evaluator verifies float64 files.
PRECISIONS = {"float32": "onnxruntime", "float64": "onnx-reference"}


def _params(spatial: str) -> tuple[Param, ...]:
    return (
        Param("in_channels", int, 4, "channels in", minimum=1),
        Param("out_channels", int, 6, "channels out", minimum=1),
        Param("kernel_size", int, 3, f"kernel width{spatial}", minimum=1),
        Param("stride", int, 1, "step between output positions", minimum=1),
        Param("padding", int, 0, "zeros added at each end", minimum=0),
        Param("dilation", int, 1, "spacing between kernel taps", minimum=1),
        Param("groups", int, 1, "blocked connections; divides both channel counts", minimum=1),
        Param("bias", bool, True, "learn an additive bias"),
    )


def _check_groups(params: Params) -> None:
    groups = int(params["groups"])
    for name in ("in_channels", "out_channels"):
        if int(params[name]) % groups:
            raise InvalidParameter(f"{name}={params[name]} is not divisible by groups={groups}")


def _weights(spatial_dims: int) -> Callable[[Params], dict[str, tuple[int, ...]]]:
    def weights(params: Params) -> dict[str, tuple[int, ...]]:
        _check_groups(params)
        kernel = (int(params["kernel_size"]),) * spatial_dims
        shapes = {
            "weight": (
                int(params["out_channels"]),
                int(params["in_channels"]) // int(params["groups"]),
                *kernel,
            )
        }
        if params["bias"]:
            shapes["bias"] = (int(params["out_channels"]),)
        return shapes

    return weights


def _build(spatial_dims: int) -> Callable[[Params], nn.Module]:
    def build(params: Params) -> nn.Module:
        from torch import nn

        _check_groups(params)
        convolution = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        return convolution(
            int(params["in_channels"]),
            int(params["out_channels"]),
            int(params["kernel_size"]),
            stride=int(params["stride"]),
            padding=int(params["padding"]),
            dilation=int(params["dilation"]),
            groups=int(params["groups"]),
            bias=bool(params["bias"]),
        )

    return build


def _params_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """``nn.Conv1d``'s weight gives ``out_channels``, the kernel and the bias.

    Not ``in_channels``: the weight holds ``in_channels // groups`` of them, and
    ``groups`` leaves no other trace, so a grouped checkpoint would load as a
    different layer. ``-p in_channels=...`` (and ``groups``) says it; a wrong
    value is refused by the weight's shape.
    """
    out_channels, _, kernel, *_ = shapes["weight"]
    return {"out_channels": out_channels, "kernel_size": kernel, "bias": "bias" in shapes}


def _flops(spatial: tuple[str, ...]) -> Callable[[Params, Dims], int]:
    def flops(params: Params, dims: Dims) -> int:
        values: dict[str, int | bool] = {
            name: value for name, value in params.items() if isinstance(value, (int, bool))
        }
        positions = 1
        for name in spatial:
            positions *= evaluate(parse_formula(OUTPUT.format(size=name)), {**values, **dims})
        per_position = (
            int(params["in_channels"])
            // int(params["groups"])
            * int(params["kernel_size"]) ** len(spatial)
        )
        return 2 * dims["batch"] * int(params["out_channels"]) * positions * per_position

    return flops


def _reference(module: Any) -> Callable[..., Any]:
    """torch's functional convolution, holding the module's weights."""
    import torch.nn.functional as functional

    convolve = functional.conv1d if module.weight.dim() == 3 else functional.conv2d
    options = {
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
    }
    return lambda x: convolve(x, module.weight, module.bias, **options)


def convolution_spec(name: str, description: str, batch: Dim, *spatial: Dim) -> LayerSpec:
    """The spec of a convolution over ``spatial`` dims (one for Conv1d, two for Conv2d).

    Every spatial dim gets the same derived output size and smallest size, so
    the one declaration serves any number of them.
    """
    sizes = tuple(dim.name for dim in spatial)
    return LayerSpec(
        name=name,
        description=description,
        build=_build(len(spatial)),
        weights=_weights(len(spatial)),
        params=_params(" and height" if len(spatial) > 1 else ""),
        dims=(batch, *spatial),
        inputs=(Tensor("x", ("batch", "in_channels", *sizes), "input"),),
        outputs=(
            Tensor(
                "y",
                ("batch", "out_channels", *(OUTPUT.format(size=size) for size in sizes)),
                "convolved input",
            ),
        ),
        reference=_reference,
        flops=_flops(sizes),
        batch_dim="batch",
        params_from_weights=_params_from_weights,
        precisions=PRECISIONS,
    )


CONV1D = convolution_spec(
    "conv1d",
    "torch.nn.Conv1d: a 1-d convolution over (batch, channels, length).",
    Dim("batch", 4, "sequences", check_size=9),
    Dim("length", 32, "positions per sequence", check_size=71, min_size=SMALLEST),
)
CONV2D = convolution_spec(
    "conv2d",
    "torch.nn.Conv2d with a square kernel: a 2-d convolution over (batch, channels, height, width).",
    Dim("batch", 2, "images", check_size=5),
    Dim("height", 12, "rows per image", check_size=29, min_size=SMALLEST),
    Dim("width", 10, "columns per image", check_size=23, min_size=SMALLEST),
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(CONV1D)
    register(CONV2D)

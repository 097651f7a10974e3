"""layerport-conv: ``torch.nn.Conv1d`` and ``Conv2d`` as layer types (torch-free specs).

A convolution's output length is a function of its input's length and four
parameters, ``(length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride
+ 1`` (torch's ``Conv1d`` documentation, "Shape"), and it has no output at all
below ``dilation * (kernel_size - 1) + 1 - 2 * padding``. Both are declared on the
spec as formulas: ``show`` prints them, the export names the output's dim by
its formula, and verification starts its grid at the smallest valid length.

``conv2d`` takes torch's per-axis sizes (``kernel_size=(3, 5)``) as scalar
parameters, because a parameter is one number: ``kernel_height`` and
``kernel_width`` (likewise ``stride_``, ``padding_`` and ``dilation_``) set one
axis, and 0, their default, means the shared value (``kernel_size``,
``stride``...), the convention of torch's ``proj_size=0``. So ``-p
kernel_size=3`` is a 3x3 kernel, and ``-p kernel_height=1 -p kernel_width=7`` a
1x7 one; the formulas pick the axis' value with ``A if A else B``, which the
file's dim names show resolved.
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

# torch's Conv1d/Conv2d "Shape" formula, per spatial dim, over that dim's settings.
SHAPE = "({size} + 2 * {padding} - {dilation} * ({kernel_size} - 1) - 1) // {stride} + 1"
# The smallest input that leaves one output position.
SHAPE_SMALLEST = "{dilation} * ({kernel_size} - 1) + 1 - 2 * {padding}"
# The settings a spatial dim's size depends on, each with a per-axis override in 2-d.
AXIS_SETTINGS = ("kernel_size", "stride", "padding", "dilation")
# The 1-d forms, with the plain names (conv1d has one axis).
OUTPUT = SHAPE.format(size="{size}", **{name: name for name in AXIS_SETTINGS})
SMALLEST = SHAPE_SMALLEST.format(**{name: name for name in AXIS_SETTINGS})

# onnxruntime 1.32's CPU provider has a float32 Conv kernel only; onnx's
# reference evaluator verifies float64 files.
PRECISIONS = {"float32": "onnxruntime", "float64": "onnx-reference"}


def _override(setting: str, axis: str) -> str:
    """The per-axis parameter's name: ``kernel_height`` for ``kernel_size``, ``stride_width``..."""
    return f"{setting.removesuffix('_size')}_{axis}"


def _axis_formula(setting: str, axis: str | None) -> str:
    """The setting along ``axis`` as a formula: the override unless 0, else the shared value."""
    if axis is None:
        return setting
    override = _override(setting, axis)
    return f"({override} if {override} else {setting})"


def output_size(size: str, axis: str | None = None) -> str:
    """The output size along the dim ``size`` (its axis' settings when ``axis`` is given)."""
    settings = {name: _axis_formula(name, axis) for name in AXIS_SETTINGS}
    return SHAPE.format(size=size, **settings)


def smallest_size(axis: str | None = None) -> str:
    """The smallest input along ``axis`` that leaves an output."""
    return SHAPE_SMALLEST.format(**{name: _axis_formula(name, axis) for name in AXIS_SETTINGS})


def _setting(params: Params, setting: str, axis: str | None) -> int:
    """One axis' value of ``setting``: its override unless 0, else the shared value."""
    if axis is not None and int(params[_override(setting, axis)]):
        return int(params[_override(setting, axis)])
    return int(params[setting])


def _params(axes: tuple[str, ...]) -> tuple[Param, ...]:
    shared = (
        Param("in_channels", int, 4, "channels in", minimum=1),
        Param("out_channels", int, 6, "channels out", minimum=1),
        Param("kernel_size", int, 3, "kernel width" + (" and height" if axes else ""), minimum=1),
        Param("stride", int, 1, "step between output positions", minimum=1),
        Param("padding", int, 0, "zeros added at each end", minimum=0),
        Param("dilation", int, 1, "spacing between kernel taps", minimum=1),
        Param("groups", int, 1, "blocked connections; divides both channel counts", minimum=1),
        Param("bias", bool, True, "learn an additive bias"),
    )
    per_axis = tuple(
        Param(
            _override(setting, axis),
            int,
            0,
            f"{setting} along the {axis}; 0: {setting}'s",
            minimum=0,
        )
        for setting in AXIS_SETTINGS
        for axis in axes
    )
    return shared + per_axis


def _check_groups(params: Params) -> None:
    groups = int(params["groups"])
    for name in ("in_channels", "out_channels"):
        if int(params[name]) % groups:
            raise InvalidParameter(f"{name}={params[name]} is not divisible by groups={groups}")


def _weights(axes: tuple[str | None, ...]) -> Callable[[Params], dict[str, tuple[int, ...]]]:
    def weights(params: Params) -> dict[str, tuple[int, ...]]:
        _check_groups(params)
        kernel = tuple(_setting(params, "kernel_size", axis) for axis in axes)
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


def _build(axes: tuple[str | None, ...]) -> Callable[[Params], nn.Module]:
    def build(params: Params) -> nn.Module:
        from torch import nn

        _check_groups(params)
        # Any: torch types Conv2d's sizes as pairs, and these are tuples of either length.
        convolution: Any = nn.Conv1d if len(axes) == 1 else nn.Conv2d
        kernel_size, stride, padding, dilation = (
            tuple(_setting(params, setting, axis) for axis in axes) for setting in AXIS_SETTINGS
        )
        module: nn.Module = convolution(
            int(params["in_channels"]),
            int(params["out_channels"]),
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=int(params["groups"]),
            bias=bool(params["bias"]),
        )
        return module

    return build


def _from_weights(
    axes: tuple[str | None, ...],
) -> Callable[..., dict[str, ParamValue]]:
    def params_from_weights(
        shapes: Mapping[str, tuple[int, ...]], params: Params | None = None
    ) -> dict[str, ParamValue]:
        """The weight, ``(out_channels, in_channels // groups, *kernel)``, gives the sizes.

        ``in_channels`` is the weight's second dim times ``groups`` (from
        ``params``, the settings so far; 1 without them), which leaves no other
        trace: a grouped checkpoint needs ``-p groups=...``, and a wrong one is
        refused by a channel count it does not divide.
        """
        groups = int(params["groups"]) if params is not None else 1
        out_channels, per_group, *kernel = shapes["weight"]
        implied: dict[str, ParamValue] = {
            "in_channels": per_group * groups,
            "out_channels": out_channels,
            "bias": "bias" in shapes,
        }
        if len(set(kernel)) == 1:
            implied["kernel_size"] = kernel[0]
        for axis, size in zip(axes, kernel, strict=True):
            if axis is not None:
                implied[_override("kernel_size", axis)] = size
        return implied

    return params_from_weights


def _flops(sizes: tuple[str, ...], axes: tuple[str | None, ...]) -> Callable[[Params, Dims], int]:
    def flops(params: Params, dims: Dims) -> int:
        values: dict[str, int | bool] = {
            name: value for name, value in params.items() if isinstance(value, (int, bool))
        }
        positions = per_position = 1
        for size, axis in zip(sizes, axes, strict=True):
            positions *= evaluate(parse_formula(output_size(size, axis)), {**values, **dims})
            per_position *= _setting(params, "kernel_size", axis)
        per_position *= int(params["in_channels"]) // int(params["groups"])
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


def convolution_spec(
    name: str, description: str, batch: Dim, *spatial: tuple[str, int, int, str, str | None]
) -> LayerSpec:
    """The spec of a convolution over ``spatial`` dims (one for Conv1d, two for Conv2d).

    Each spatial dim is ``(name, traced size, check size, help, axis)``; with an
    ``axis`` (``height``, ``width``) its settings have per-axis overrides.
    """
    sizes = tuple(dim[0] for dim in spatial)
    axes = tuple(dim[4] for dim in spatial)
    dims = tuple(
        Dim(size, default, help_text, check_size=check, min_size=smallest_size(axis))
        for size, default, check, help_text, axis in spatial
    )
    return LayerSpec(
        name=name,
        description=description,
        build=_build(axes),
        weights=_weights(axes),
        params=_params(tuple(axis for axis in axes if axis is not None)),
        dims=(batch, *dims),
        inputs=(Tensor("x", ("batch", "in_channels", *sizes), "input"),),
        outputs=(
            Tensor(
                "y",
                ("batch", "out_channels", *map(output_size, sizes, axes)),
                "convolved input",
            ),
        ),
        reference=_reference,
        flops=_flops(sizes, axes),
        batch_dim="batch",
        params_from_weights=_from_weights(axes),
        precisions=PRECISIONS,
    )


CONV1D = convolution_spec(
    "conv1d",
    "torch.nn.Conv1d: a 1-d convolution over (batch, channels, length).",
    Dim("batch", 4, "sequences", check_size=9),
    ("length", 32, 71, "positions per sequence", None),
)
CONV2D = convolution_spec(
    "conv2d",
    "torch.nn.Conv2d: a 2-d convolution over (batch, channels, height, width), per-axis sizes.",
    Dim("batch", 2, "images", check_size=5),
    ("height", 12, 29, "rows per image", "height"),
    ("width", 10, 23, "columns per image", "width"),
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(CONV1D)
    register(CONV2D)

"""``maxpool1d``, ``maxpool2d``, ``avgpool1d`` and ``avgpool2d``, with derived output lengths.

As for a convolution, the output length follows from the input's (torch's
``MaxPool1d`` documentation, "Shape") and there is no output below a smallest
length; both are declared as formulas, so ``show`` prints them, the export
names the output's dims by them and verification starts at the smallest.
Square kernels; ``ceil_mode`` is left at torch's default (false).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerport.plugin import Dim, InvalidParameter, LayerSpec, Param, Params, Tensor
from layerport_nn.common import BATCH

if TYPE_CHECKING:
    from torch import nn

# MaxPool's output size per spatial dim, and the smallest input with an output.
MAX_OUTPUT = "({size} + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1"
MAX_SMALLEST = "dilation * (kernel_size - 1) + 1 - 2 * padding"
# AvgPool has no dilation.
AVG_OUTPUT = "({size} + 2 * padding - kernel_size) // stride + 1"
AVG_SMALLEST = "kernel_size - 2 * padding"
# onnxruntime 1.32's CPU provider has no float64 AveragePool kernel; onnx's
# reference evaluator verifies float64 average pools.
AVG_PRECISIONS = {"float32": "onnxruntime", "float64": "onnx-reference"}
MAX_PRECISIONS = {"float32": "onnxruntime", "float64": "onnxruntime"}


def _params(kind: str) -> tuple[Param, ...]:
    params = (
        Param("channels", int, 4, "channels, pooled each on its own", minimum=1),
        Param("kernel_size", int, 2, "window width (and height, in 2-d)", minimum=1),
        # torch's default stride is the kernel size; here it is stated.
        Param("stride", int, 2, "step between windows (torch's default: kernel_size)", minimum=1),
        Param(
            "padding", int, 0, "implicit padding at each end, at most kernel_size // 2", minimum=0
        ),
    )
    if kind == "max":
        return (*params, Param("dilation", int, 1, "spacing between window taps", minimum=1))
    return (*params, Param("count_include_pad", bool, True, "average over the padding's zeros too"))


def _check_padding(params: Params) -> dict[str, tuple[int, ...]]:
    """No weights; refuses the padding torch refuses, before anything is built."""
    if int(params["padding"]) > int(params["kernel_size"]) // 2:
        raise InvalidParameter(
            f"padding={params['padding']} must be at most half the kernel "
            f"(kernel_size={params['kernel_size']})"
        )
    return {}


def _build(kind: str, spatial_dims: int) -> Callable[[Params], nn.Module]:
    def build(params: Params) -> nn.Module:
        from torch import nn

        _check_padding(params)
        options: dict[str, Any] = {
            "kernel_size": int(params["kernel_size"]),
            "stride": int(params["stride"]),
            "padding": int(params["padding"]),
        }
        if kind == "max":
            pool: Any = _max_pool_1d() if spatial_dims == 1 else nn.MaxPool2d
            options["dilation"] = int(params["dilation"])
        else:
            pool = nn.AvgPool1d if spatial_dims == 1 else nn.AvgPool2d
            options["count_include_pad"] = bool(params["count_include_pad"])
        module: nn.Module = pool(**options)
        return module

    return build


def _max_pool_1d() -> type[nn.Module]:
    """``nn.MaxPool1d`` computed as a one-row ``max_pool2d``.

    torch 2.13's export of ``max_pool1d`` pins the length to the traced one;
    the 2-d op over a one-row image keeps it dynamic, with the same result.
    """
    import torch
    from torch import nn
    from torch.nn import functional

    class MaxPool1d(nn.MaxPool1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kernel, stride, padding, dilation = (
                int(getattr(self, name))
                for name in ("kernel_size", "stride", "padding", "dilation")
            )
            pooled = functional.max_pool2d(
                x.unsqueeze(2), (1, kernel), (1, stride), (0, padding), (1, dilation)
            )
            return pooled.squeeze(2)

    return MaxPool1d


def _reference(module: Any) -> Callable[..., Any]:
    """The windows unfolded and reduced: each output is a max or a mean over its window."""
    import torch
    from torch.nn import functional

    def reference(x: torch.Tensor) -> torch.Tensor:
        spatial = x.dim() - 2
        kernel, stride, dilation = (
            _pair(getattr(module, name, 1), spatial, 1)
            for name in ("kernel_size", "stride", "dilation")
        )
        padding = _pair(module.padding, spatial, 0)
        is_max = hasattr(module, "dilation")
        # A 1-d input pools as a one-row image.
        image = x.unsqueeze(2) if spatial == 1 else x
        fill = float("-inf") if is_max else 0.0
        padded = functional.pad(image, (padding[-1],) * 2 + (padding[0],) * 2, value=fill)
        windows = functional.unfold(padded, kernel, dilation=dilation, stride=stride)
        batch, channels = x.shape[:2]
        windows = windows.view(batch, channels, -1, windows.shape[-1])
        rows = (padded.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        if is_max:
            pooled = windows.amax(dim=2)
        elif module.count_include_pad:
            pooled = windows.mean(dim=2)
        else:
            ones = functional.pad(
                torch.ones_like(image[:1, :1]), (padding[-1],) * 2 + (padding[0],) * 2
            )
            counts = functional.unfold(ones, kernel, stride=stride).sum(dim=1)
            pooled = windows.sum(dim=2) / counts
        pooled = pooled.view(batch, channels, rows, -1)
        return pooled.squeeze(2) if spatial == 1 else pooled

    return reference


def _pair(value: Any, spatial: int, rows: int) -> tuple[int, int]:
    """A torch size argument as (rows, columns); a 1-d pool is one row, ``rows`` in that dim."""
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if spatial == 2 else (rows, int(value[0]))
    return (int(value), int(value)) if spatial == 2 else (rows, int(value))


def pooling_spec(kind: str, name: str, description: str, *spatial: Dim) -> LayerSpec:
    """The spec of a max or average pool over ``spatial`` dims (one or two)."""
    output = MAX_OUTPUT if kind == "max" else AVG_OUTPUT
    sizes = tuple(dim.name for dim in spatial)
    return LayerSpec(
        name=name,
        description=description,
        build=_build(kind, len(spatial)),
        weights=_check_padding,
        params=_params(kind),
        dims=(BATCH, *spatial),
        inputs=(Tensor("x", ("batch", "channels", *sizes), "input"),),
        outputs=(
            Tensor(
                "y", ("batch", "channels", *(output.format(size=size) for size in sizes)), "pooled"
            ),
        ),
        reference=_reference,
        batch_dim="batch",
        precisions=MAX_PRECISIONS if kind == "max" else AVG_PRECISIONS,
    )


def _dim(name: str, default: int, check_size: int, smallest: str) -> Dim:
    return Dim(name, default, f"{name} of the input", check_size=check_size, min_size=smallest)


MAXPOOL1D = pooling_spec(
    "max",
    "maxpool1d",
    "torch.nn.MaxPool1d over (batch, channels, length).",
    _dim("length", 16, 41, MAX_SMALLEST),
)
MAXPOOL2D = pooling_spec(
    "max",
    "maxpool2d",
    "torch.nn.MaxPool2d with a square window over (batch, channels, height, width).",
    _dim("height", 8, 21, MAX_SMALLEST),
    _dim("width", 6, 17, MAX_SMALLEST),
)
AVGPOOL1D = pooling_spec(
    "avg",
    "avgpool1d",
    "torch.nn.AvgPool1d over (batch, channels, length).",
    _dim("length", 16, 41, AVG_SMALLEST),
)
AVGPOOL2D = pooling_spec(
    "avg",
    "avgpool2d",
    "torch.nn.AvgPool2d with a square window over (batch, channels, height, width).",
    _dim("height", 8, 21, AVG_SMALLEST),
    _dim("width", 6, 17, AVG_SMALLEST),
)

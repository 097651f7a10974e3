"""Pads: ``constantpad1d``/``2d``, ``reflectionpad1d``/``2d``, ``replicationpad1d``/``2d``.

torch's own modules, one layer type each, with each side's width its own
parameter (``left``, ``right``, and in 2-d ``top``, ``bottom``): torch's
``padding=(left, right, top, bottom)`` tuple, one number per parameter. The
output's lengths are derived (``left + length + right``), and a reflection
needs an input longer than its wider side (``max(left, right) + 1``), torch's
own rule; a mode per layer type, not a ``mode`` parameter, because that
smallest size depends on the mode and a dim's ``min_size`` is a formula over
numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerport.plugin import Dim, LayerSpec, Param, Params, Tensor
from layerport_nn.common import BATCH

if TYPE_CHECKING:
    import torch
    from torch import nn

# Each spatial dim, its two sides (torch's order: the last dim's first) and its sizes.
_SIDES = {"length": ("left", "right"), "width": ("left", "right"), "height": ("top", "bottom")}
_SIZES = {"length": (16, 41), "height": (8, 21), "width": (6, 17)}
# Asymmetric by default, so an export at the defaults shows which side is which.
_DEFAULT_WIDTHS = {"left": 2, "right": 1, "top": 1, "bottom": 3}
_TORCH = {
    "constant": "ConstantPad",
    "reflection": "ReflectionPad",
    "replication": "ReplicationPad",
}


def _widths(params: Params, spatial: tuple[str, ...]) -> tuple[int, ...]:
    """torch's ``padding`` tuple: the last dim's sides first."""
    return tuple(int(params[side]) for dim in reversed(spatial) for side in _SIDES[dim])


def _build(mode: str, spatial: tuple[str, ...]) -> Callable[[Params], nn.Module]:
    def build(params: Params) -> nn.Module:
        from torch import nn

        module_type = getattr(nn, f"{_TORCH[mode]}{len(spatial)}d")
        widths = _widths(params, spatial)
        if mode == "constant":
            module: nn.Module = module_type(widths, float(params["value"]))
        else:
            module = module_type(widths)
        return module

    return build


def _reference(mode: str) -> Callable[[Any], Callable[..., Any]]:
    """Each output position's source position, written out: clamped, reflected or filled."""

    def reference(module: Any) -> Callable[..., Any]:

        widths = tuple(int(width) for width in module.padding)

        def pad(x: torch.Tensor) -> torch.Tensor:
            # torch's tuple names the last dim's sides first.
            for axis, (before, after) in enumerate(zip(widths[::2], widths[1::2], strict=True)):
                x = _pad_axis(x, x.dim() - 1 - axis, before, after, mode, module)
            return x

        return pad

    return reference


def _pad_axis(
    x: torch.Tensor, axis: int, before: int, after: int, mode: str, module: Any
) -> torch.Tensor:
    import torch

    size = x.shape[axis]
    positions = torch.arange(-before, size + after)
    if mode == "constant":
        inside = (positions >= 0) & (positions < size)
        taken = x.index_select(axis, positions.clamp(0, size - 1))
        shape = [1] * x.dim()
        shape[axis] = len(positions)
        return torch.where(inside.view(shape), taken, torch.full_like(taken, module.value))
    if mode == "replication":
        return x.index_select(axis, positions.clamp(0, size - 1))
    # Reflection about the first and the last position, neither repeated.
    reflected = positions.abs()
    reflected = torch.where(reflected > size - 1, 2 * (size - 1) - reflected, reflected)
    return x.index_select(axis, reflected)


def pad_spec(mode: str, *spatial: str) -> LayerSpec:
    """The spec of a ``mode`` pad over ``spatial`` dims (``length``; or ``height``, ``width``)."""
    sides = tuple(side for dim in spatial for side in _SIDES[dim])
    params = (
        Param("channels", int, 4, "channels, each padded on its own", minimum=1),
        *(
            Param(side, int, _DEFAULT_WIDTHS[side], f"positions added at the {side}", minimum=0)
            for side in sides
        ),
    )
    if mode == "constant":
        params += (Param("value", float, 0.0, "the value the pad holds"),)
    dims = tuple(
        Dim(
            dim,
            _SIZES[dim][0],
            f"{dim} of the input",
            check_size=_SIZES[dim][1],
            min_size=f"max({', '.join(_SIDES[dim])}) + 1" if mode == "reflection" else 1,
        )
        for dim in spatial
    )
    outputs = tuple(f"{_SIDES[dim][0]} + {dim} + {_SIDES[dim][1]}" for dim in spatial)
    rank = len(spatial)
    torch_name = f"{_TORCH[mode]}{rank}d"
    return LayerSpec(
        name=torch_name.lower(),
        description=f"torch.nn.{torch_name}: {mode} padding of (batch, channels, "
        f"{', '.join(spatial)}), each side its own width.",
        build=_build(mode, spatial),
        weights=lambda params: {},
        params=params,
        dims=(BATCH, *dims),
        inputs=(Tensor("x", ("batch", "channels", *spatial), "input"),),
        outputs=(Tensor("y", ("batch", "channels", *outputs), "padded input"),),
        reference=_reference(mode),
        batch_dim="batch",
    )


PADS = tuple(
    pad_spec(mode, *spatial)
    for spatial in (("length",), ("height", "width"))
    for mode in ("constant", "reflection", "replication")
)

"""Normalization layers: ``layernorm``, ``rmsnorm``, ``batchnorm1d`` and ``batchnorm2d``.

Each is torch's own module, so a checkpoint's keys load as they are. BatchNorm
runs as at inference: it normalizes by the running statistics its checkpoint
holds (``running_mean``, ``running_var``; ``num_batches_tracked`` is loaded
and unused), never by the batch's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from layerport.plugin import ALL_PRECISIONS, Dim, LayerSpec, Param, Params, ParamValue, Tensor
from layerport_nn.common import BATCH, POSITIONWISE, SEQ, TOKENS, scattered

if TYPE_CHECKING:
    import torch
    from torch import nn

_FEATURES = Param("features", int, 16, "size of the last dim, normalized over", minimum=1)
_AFFINE = Param("elementwise_affine", bool, True, "learn a per-feature scale")
# A transformer's norms in a float16 model file: onnxruntime runs them (bfloat16 has no
# norm kernel there).
_NORM_PRECISIONS = {name: runtime for name, runtime in ALL_PRECISIONS.items() if name != "bfloat16"}


def _scatter_affine(module: nn.Module) -> nn.Module:
    for name, center in (
        ("weight", 1.0),
        ("bias", 0.0),
        ("running_mean", 0.0),
        ("running_var", 1.0),
    ):
        tensor = getattr(module, name, None)
        if tensor is not None:
            scattered(tensor, center, 0.5)
    return module


def _feature_weights(params: Params, with_bias: bool) -> dict[str, tuple[int, ...]]:
    if not params["elementwise_affine"]:
        return {}
    shapes: dict[str, tuple[int, ...]] = {"weight": (int(params["features"]),)}
    if with_bias:
        shapes["bias"] = (int(params["features"]),)
    return shapes


def _affine_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    """The scale's length is ``features``; the tensors present say which are learned.

    A norm without learned weights has no tensors: its ``features`` is a ``-p``.
    """
    (features,) = shapes["weight"]
    implied: dict[str, ParamValue] = {"features": features, "elementwise_affine": True}
    return implied


def _build_layernorm(params: Params) -> nn.Module:
    from torch import nn

    affine = bool(params["elementwise_affine"])
    return _scatter_affine(
        nn.LayerNorm(
            int(params["features"]),
            eps=float(params["eps"]),
            elementwise_affine=affine,
            bias=bool(params["bias"]),
        )
    )


def _layernorm_reference(module: Any) -> Callable[..., Any]:
    """Mean and variance over the last dim, written out."""

    def reference(x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=-1, keepdim=True)
        y = centered / (centered.pow(2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
        if module.weight is not None:
            y = y * module.weight
        if module.bias is not None:
            y = y + module.bias
        return y

    return reference


def _layernorm_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    return {**_affine_from_weights(shapes), "bias": "bias" in shapes}


LAYERNORM = LayerSpec(
    name="layernorm",
    description="torch.nn.LayerNorm over the last dim of (batch, seq, features).",
    build=_build_layernorm,
    weights=lambda params: _feature_weights(params, bool(params["bias"])),
    params=(
        _FEATURES,
        Param("eps", float, 1e-5, "added to the variance", minimum=0.0),
        _AFFINE,
        Param("bias", bool, True, "learn a per-feature shift too (with elementwise_affine)"),
    ),
    dims=(BATCH, SEQ),
    streaming=POSITIONWISE,
    inputs=(Tensor("x", TOKENS, "input"),),
    outputs=(Tensor("y", TOKENS, "normalized input"),),
    reference=_layernorm_reference,
    batch_dim="batch",
    params_from_weights=_layernorm_from_weights,
    precisions=_NORM_PRECISIONS,
)


def _build_rmsnorm(params: Params) -> nn.Module:
    from torch import nn

    return _scatter_affine(
        nn.RMSNorm(
            int(params["features"]),
            eps=float(params["eps"]),
            elementwise_affine=bool(params["elementwise_affine"]),
        )
    )


def _rmsnorm_reference(module: Any) -> Callable[..., Any]:
    """The root mean square over the last dim, written out."""

    def reference(x: torch.Tensor) -> torch.Tensor:
        y = x / (x.pow(2).mean(dim=-1, keepdim=True) + module.eps).sqrt()
        return y * module.weight if module.weight is not None else y

    return reference


RMSNORM = LayerSpec(
    name="rmsnorm",
    description="torch.nn.RMSNorm over the last dim of (batch, seq, features), as Llama's norms.",
    build=_build_rmsnorm,
    weights=lambda params: _feature_weights(params, with_bias=False),
    params=(
        _FEATURES,
        # torch's default (None) is the input dtype's epsilon, which differs per
        # precision; a checkpoint's model states its own (Llama: 1e-6 or 1e-5).
        Param("eps", float, 1e-6, "added to the mean square", minimum=0.0),
        _AFFINE,
    ),
    dims=(BATCH, SEQ),
    streaming=POSITIONWISE,
    inputs=(Tensor("x", TOKENS, "input"),),
    outputs=(Tensor("y", TOKENS, "normalized input"),),
    reference=_rmsnorm_reference,
    batch_dim="batch",
    params_from_weights=_affine_from_weights,
    precisions=_NORM_PRECISIONS,
)


def _batchnorm_weights(params: Params) -> dict[str, tuple[int, ...]]:
    channels = (int(params["num_features"]),)
    shapes: dict[str, tuple[int, ...]] = (
        {"weight": channels, "bias": channels} if params["affine"] else {}
    )
    # torch's key names and order, the step counter included.
    return {**shapes, "running_mean": channels, "running_var": channels, "num_batches_tracked": ()}


def _build_batchnorm(spatial_dims: int) -> Callable[[Params], nn.Module]:
    def build(params: Params) -> nn.Module:
        from torch import nn

        norm = nn.BatchNorm1d if spatial_dims == 1 else nn.BatchNorm2d
        return _scatter_affine(
            norm(
                int(params["num_features"]), eps=float(params["eps"]), affine=bool(params["affine"])
            )
        )

    return build


def _batchnorm_from_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ParamValue]:
    (channels,) = shapes["running_mean"]
    return {"num_features": channels, "affine": "weight" in shapes}


def _batchnorm_reference(module: Any) -> Callable[..., Any]:
    """``(x - running_mean) / sqrt(running_var + eps) * weight + bias``, per channel."""

    def reference(x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - module.running_mean.view(shape)) / (
            module.running_var.view(shape) + module.eps
        ).sqrt()
        if module.weight is not None:
            y = y * module.weight.view(shape) + module.bias.view(shape)
        return y

    return reference


def _batchnorm_spec(name: str, description: str, *spatial: Dim) -> LayerSpec:
    dims = ("batch", "num_features", *(dim.name for dim in spatial))
    return LayerSpec(
        name=name,
        description=description,
        build=_build_batchnorm(len(spatial)),
        weights=_batchnorm_weights,
        params=(
            Param("num_features", int, 6, "channels, normalized each on its own", minimum=1),
            Param("eps", float, 1e-5, "added to the running variance", minimum=0.0),
            Param("affine", bool, True, "learn a per-channel scale and shift"),
        ),
        dims=(BATCH, *spatial),
        inputs=(Tensor("x", dims, "input"),),
        outputs=(Tensor("y", dims, "normalized by the running statistics"),),
        reference=_batchnorm_reference,
        batch_dim="batch",
        params_from_weights=_batchnorm_from_weights,
    )


BATCHNORM1D = _batchnorm_spec(
    "batchnorm1d",
    "torch.nn.BatchNorm1d at inference, by its running statistics: (batch, num_features, length).",
    Dim("length", 12, "positions per sample", check_size=31),
)
BATCHNORM2D = _batchnorm_spec(
    "batchnorm2d",
    "torch.nn.BatchNorm2d at inference, by its running statistics: (batch, num_features, height, width).",
    Dim("height", 6, "rows per image", check_size=15),
    Dim("width", 5, "columns per image", check_size=13),
)

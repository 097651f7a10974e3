"""A layer configuration: which layer, its parameters, dim sizes, dtype and weights.

Everything here is checked before anything is built or allocated, and nothing
here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from layerport.errors import BadFile, InvalidDim, InvalidParameter, UserInputError
from layerport.limits import (
    check_allocation,
)
from layerport.metadata import ExportRecord
from layerport.registry import RegisteredLayer, Registry
from layerport.spec import DEFAULT_DTYPE, DTYPES, LayerSpec, ParamValue, Tensor
from layerport.weights import sha256_file

DTYPE_BYTES = {"float32": 4, "float64": 8}


@dataclass(frozen=True)
class LayerConfig:
    """A fully resolved and validated request for one layer instance."""

    layer: RegisteredLayer
    params: Mapping[str, ParamValue]
    dims: Mapping[str, int]
    dtype: str = DEFAULT_DTYPE
    seed: int = 0
    weights: Path | None = None

    @property
    def spec(self) -> LayerSpec:
        return self.layer.spec

    def shape(self, tensor: Tensor, dims: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The concrete shape of ``tensor``, at ``dims`` or at this configuration's dims."""
        return self.spec.shape(tensor, self.params, self.dims if dims is None else dims)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.spec.weights(self.params))

    def weight_bytes(self) -> int:
        itemsize = DTYPE_BYTES[self.dtype]
        return sum(math.prod(shape) * itemsize for shape in self.weight_shapes().values())

    def with_dims(self, dims: Mapping[str, int]) -> LayerConfig:
        return LayerConfig(self.layer, self.params, dict(dims), self.dtype, self.seed, self.weights)


def parse_assignments(pairs: Iterable[str], what: str) -> dict[str, str]:
    """Split ``KEY=VALUE`` strings; ``what`` names the option in errors."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise UserInputError(f"{what} expects KEY=VALUE, got {pair!r}")
        if key.strip() in parsed:
            raise UserInputError(f"{what} {key.strip()} is given twice")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_dim_sizes(pairs: Iterable[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, text in parse_assignments(pairs, "--dim").items():
        try:
            sizes[name] = int(text)
        except ValueError:
            raise InvalidDim(f"dim {name} must be an integer >= 1, got {text!r}") from None
        if sizes[name] < 1:
            raise InvalidDim(f"dim {name} must be an integer >= 1, got {sizes[name]}")
    return sizes


def resolve_config(
    registry: Registry,
    layer_name: str,
    params: Mapping[str, object] | None = None,
    dims: Mapping[str, int] | None = None,
    dtype: str = DEFAULT_DTYPE,
    seed: int = 0,
    weights: Path | None = None,
) -> LayerConfig:
    """Look the layer up and check every choice against its spec."""
    layer = registry.resolve(layer_name)
    if dtype not in DTYPES:
        raise UserInputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidParameter(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    config = LayerConfig(
        layer=layer,
        params=layer.spec.resolve_params(params),
        dims=layer.spec.resolve_dims(dims),
        dtype=dtype,
        seed=seed,
        weights=weights,
    )
    check_memory(config)
    return config


def estimate_bytes(config: LayerConfig, dims: Mapping[str, int] | None = None) -> int:
    """A generous estimate of the memory one forward pass needs.

    Weights, inputs and outputs, plus as much again for intermediates (an RNN
    keeps every hidden state), then doubled for the eager and onnxruntime copies
    a verification holds at once.
    """
    itemsize = DTYPE_BYTES[config.dtype]
    tensors = config.spec.inputs + config.spec.outputs
    activations = sum(math.prod(config.shape(tensor, dims)) for tensor in tensors) * itemsize
    return 2 * (config.weight_bytes() + 2 * activations)


def check_memory(config: LayerConfig, dims: Mapping[str, int] | None = None) -> None:
    """Refuse a configuration that would exhaust memory, before allocating anything."""
    check_allocation(estimate_bytes(config, dims), f"layer {config.spec.name} with these sizes")


def config_from_record(
    registry: Registry,
    record: ExportRecord,
    *,
    weights: Path | None = None,
    dims: Mapping[str, int] | None = None,
) -> LayerConfig:
    """Rebuild the configuration an exported file records, to check the file against it.

    A file exported from a weights file needs that file again, and its hash must
    match the one recorded: otherwise the check would compare against other weights.
    """
    if record.weights_sha256 is not None:
        if weights is None:
            raise UserInputError(
                "this file was exported from a weights file; pass the same file with --weights"
            )
        if not weights.is_file():
            raise BadFile(
                f"weights file {weights} does not exist"
                if not weights.exists()
                else f"{weights} is not a file"
            )
        digest = sha256_file(weights)
        if digest != record.weights_sha256:
            raise BadFile(
                f"weights file {weights} does not match the one this file was exported from "
                f"(sha256 {digest[:12]}..., recorded {record.weights_sha256[:12]}...)"
            )
    elif weights is not None:
        raise UserInputError(
            f"this file was exported from seed {record.seed}, not from a weights file; drop --weights"
        )
    export_dims = dict(record.dynamic_dims)
    export_dims.update(dims or {})
    return resolve_config(
        registry,
        record.qualified_name,
        params=record.params,
        dims=export_dims,
        dtype=record.dtype,
        seed=record.seed if record.seed is not None else 0,
        weights=weights,
    )

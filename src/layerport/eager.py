"""The eager side of a layer: its inputs and one forward pass in PyTorch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from layerport.arrays import ArraySpec, check_arrays, random_arrays, read_input_files
from layerport.config import LayerConfig, check_memory
from layerport.errors import UserInputError


def input_array_specs(config: LayerConfig) -> list[ArraySpec]:
    """What each input must look like: dynamic dims by name, fixed dims by size."""
    dynamic = {dim.name for dim in config.spec.dims}
    return [
        ArraySpec(
            name=tensor.name,
            dims=tuple(
                dim if dim in dynamic else size
                for dim, size in zip(tensor.dims, config.shape(tensor), strict=True)
            ),
            dtype=config.dtype,
            optional=tensor.optional,
        )
        for tensor in config.spec.inputs
    ]


def random_inputs(
    config: LayerConfig, seed: int | None = None, *, include_optional: bool = False
) -> dict[str, np.ndarray]:
    """Standard-normal values for every required input (and optional ones if asked), from the seed."""
    shapes = {
        tensor.name: config.shape(tensor)
        for tensor in config.spec.inputs
        if include_optional or not tensor.optional
    }
    return random_arrays(shapes, config.dtype, config.seed if seed is None else seed)


def prepare_inputs(
    config: LayerConfig,
    input_options: Sequence[str],
    *,
    explicit_dims: Mapping[str, int] | None = None,
) -> tuple[LayerConfig, dict[str, np.ndarray], list[str]]:
    """The inputs for a run: read from ``--input`` files, or drawn from the seed.

    Inputs read from files set the dynamic dims; a dim the user gave explicitly
    (``explicit_dims``, from ``--dim``) must agree with them. Returns the
    configuration at those dims, the arrays, and notes for the user (such as
    non-finite values).
    """
    if not input_options:
        return config, random_inputs(config), []
    arrays, notes = check_arrays(read_input_files(input_options), input_array_specs(config))
    explicit_dims = explicit_dims or {}
    dims = dict(config.dims)
    for tensor in config.spec.inputs:
        for axis, name in config.spec.dynamic_axes(tensor).items():
            size = int(arrays[tensor.name].shape[axis])
            if name in explicit_dims and explicit_dims[name] != size:
                raise UserInputError(
                    f"dim {name} is {explicit_dims[name]} from --dim but {size} in input {tensor.name}"
                )
            dims[name] = size
    config = config.with_dims(dims)
    check_memory(config)
    return config, arrays, notes


def run_eager(config: LayerConfig, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Build the layer and run one forward pass."""
    from layerport.build import build_module, run_module

    missing = [t.name for t in config.spec.inputs if not t.optional and t.name not in inputs]
    if missing:
        raise UserInputError(f"input {missing[0]} is required")
    return run_module(build_module(config), config, inputs)

"""A model file's interface: its inputs and outputs, and inputs generated for it."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from layerport.dtypes import element_type_name
from layerport.errors import (
    Setting,
    UserInputError,
)
from layerport.runtime.arrays import ArraySpec, random_inputs
from layerport.runtime.metadata import ExportRecord

if TYPE_CHECKING:
    from layerport.runtime.session import Session


def model_interface(
    model: onnx.ModelProto,
    optional_inputs: Collection[str] = (),
    value_ranges: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[ArraySpec], list[ArraySpec]]:
    """The model's inputs and outputs, in the graph's order.

    ``value_ranges`` gives integer inputs' valid values, ``(low, high)`` by name
    (a layerport file records them).

    Graph inputs that an initializer also defines (constants, in opsets before 9
    style) are not inputs a caller feeds, so they are left out.
    """
    initializers = {tensor.name for tensor in model.graph.initializer}
    ranges = value_ranges or {}
    inputs = [
        dataclasses.replace(array_spec_of(value, optional_inputs), values=ranges.get(value.name))
        for value in model.graph.input
        if value.name not in initializers
    ]
    return inputs, [array_spec_of(value) for value in model.graph.output]


def array_spec_of(value: onnx.ValueInfoProto, optional: Collection[str] = ()) -> ArraySpec:
    """A graph input's or output's name, dims (symbolic names or sizes) and dtype."""
    tensor_type = value.type.tensor_type
    dims: list[str | int] = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or f"{value.name}_axis{axis}")
    return ArraySpec(
        name=value.name,
        dims=tuple(dims),
        dtype=element_type_name(tensor_type.elem_type),
        optional=value.name in optional,
    )


def generated_inputs(
    session: Session, dims: Mapping[str, int], seed: int | None
) -> dict[str, np.ndarray]:
    """Inputs drawn as ``layerport run`` draws them, from the seed: standard normal, or
    integers within the valid values the file records (``ArraySpec.values``).

    Symbolic dims take their size from ``dims``, else from the sizes the file
    records it was traced at. Each input has its own dtype. Optional inputs are
    left out (zeros); a file with no inputs gets none.
    """
    record = ExportRecord.from_model(session.proto)
    sizes = dict(record.dynamic_dims) if record else {}
    unknown = sorted(
        set(dims) - {d for spec in session.inputs for d in spec.dims if isinstance(d, str)}
    )
    if unknown:
        known = sorted({d for spec in session.inputs for d in spec.dims if isinstance(d, str)})
        close = difflib.get_close_matches(unknown[0], known, n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserInputError(
            f"the file has no symbolic dim {unknown[0]!r}{suggestion}; "
            f"its symbolic dims: {', '.join(known) or '(none)'}"
        )
    sizes.update(dims)
    shapes = {}
    dtypes = {}
    ranges = {}
    for spec in session.inputs:
        if spec.optional:
            continue
        missing = [dim for dim in spec.dims if isinstance(dim, str) and dim not in sizes]
        if missing:
            raise UserInputError(
                f"give the size of dim {missing[0]} with ",
                Setting("dims", f"{missing[0]}=SIZE"),
                ", or pass ",
                Setting("inputs"),
            )
        shapes[spec.name] = tuple(sizes[dim] if isinstance(dim, str) else dim for dim in spec.dims)
        dtypes[spec.name] = spec.dtype
        if spec.values is not None:
            ranges[spec.name] = spec.values
    default_seed = record.seed if record and record.seed is not None else 0
    return random_inputs(shapes, dtypes, default_seed if seed is None else seed, ranges)

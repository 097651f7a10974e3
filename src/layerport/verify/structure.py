"""The file's interface against the spec: names, dtypes, ranks, and above all pinned dims.

A dim the exporter pinned agrees perfectly at the traced shape, so it is looked
for in the file itself, before any number is compared.
"""

from __future__ import annotations

from collections.abc import Sequence

from layerport.config import LayerConfig
from layerport.runtime.arrays import ArraySpec


def structure_problems(
    config: LayerConfig,
    inputs: Sequence[ArraySpec],
    outputs: Sequence[ArraySpec],
    where: str = "the file",
) -> list[str]:
    """What in the file's ``inputs`` and ``outputs`` contradicts the layer's spec.

    ``where`` names what declares them, for the messages: ``the file``, or
    ``the served config`` for a model a server declares.
    """
    spec = config.spec
    problems = []
    for kind, declared, actual in (
        ("inputs", spec.inputs, inputs),
        ("outputs", spec.outputs, outputs),
    ):
        declared_names = [tensor.name for tensor in declared]
        actual_names = [array.name for array in actual]
        if declared_names != actual_names:
            problems.append(
                f"{where}'s {kind} are {actual_names}, the layer declares {declared_names}"
            )
            continue
        for tensor, array in zip(declared, actual, strict=True):
            expected = config.tensor_dtype(tensor)
            if array.dtype != expected:
                problems.append(f"{tensor.name} is {array.dtype} in {where}, expected {expected}")
            if len(array.dims) != len(tensor.dims):
                problems.append(
                    f"{tensor.name} has {len(array.dims)} dims in {where}, expected {len(tensor.dims)}"
                )
                continue
            dynamic = spec.dynamic_axes(tensor)
            derived = spec.derived_axes(tensor)
            for axis, (dim, size) in enumerate(zip(array.dims, config.shape(tensor), strict=True)):
                if axis in dynamic and isinstance(dim, int):
                    problems.append(
                        f"declared-dynamic dim {dynamic[axis]} of {tensor.name} is pinned to {dim} in {where}"
                    )
                elif axis in derived and isinstance(dim, int):
                    problems.append(
                        f"derived dim {derived[axis]} of {tensor.name} is pinned to {dim} in {where}"
                    )
                elif axis not in dynamic and axis not in derived and dim != size:
                    problems.append(
                        f"{tensor.name} axis {axis} is {dim} in {where}, expected {size}"
                    )
    return problems

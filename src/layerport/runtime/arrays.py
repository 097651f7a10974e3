"""Input and output arrays: what an input must look like, checking arrays, generating them.

numpy only, no torch: ``run``, ``verify`` and the torch-free ``infer`` draw and
check inputs with the same code. ``random_inputs`` is the one input generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from layerport.dtypes import INTEGER_TYPES, PRECISIONS
from layerport.errors import Setting, UserInputError
from layerport.runtime.limits import check_allocation


@dataclass(frozen=True)
class ArraySpec:
    """What an input must look like: its name, its dims (symbolic or sized) and dtype.

    ``values`` is ``(low, high)`` for an integer input whose valid values are
    known (token ids: ``low <= id < high``).
    """

    name: str
    dims: tuple[str | int, ...]
    dtype: str
    optional: bool = False
    values: tuple[int, int] | None = None


def random_inputs(
    shapes: Mapping[str, tuple[int, ...]],
    dtype: str | Mapping[str, str],
    seed: int,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Random arrays, the same for the same seed in any process.

    ``dtype`` is one dtype for every array, or each array's dtype by name.
    Floating-point arrays are standard normal; integer ones uniform over their
    ``ranges`` (``low <= value < high``, required for them: random integers are
    rarely valid ids); boolean ones true or false with equal odds (a mask). One
    generator draws every array in turn, so float values do not depend on the
    float precision. Refused before drawing if they would not fit in the memory
    limit: the shapes may come from a file's metadata or from sizes the user chose.
    """
    dtypes = {name: dtype if isinstance(dtype, str) else dtype[name] for name in shapes}
    ranges = ranges or {}
    for name, shape in shapes.items():
        if dtypes[name] in INTEGER_TYPES and name not in ranges:
            raise UserInputError(
                f"input {name} is {dtypes[name]} and its valid values are unknown "
                "(the file records none), so pass ",
                Setting("inputs"),
            )
        if dtypes[name] not in (*PRECISIONS, *INTEGER_TYPES, "bool"):
            raise UserInputError(
                f"input {name} is {dtypes[name]}; inputs can be generated as "
                f"{', '.join((*PRECISIONS, *INTEGER_TYPES))} or bool only, so pass ",
                Setting("inputs"),
            )
        if not all(isinstance(size, int) and not isinstance(size, bool) for size in shape) or any(
            size < 0 for size in shape
        ):
            raise UserInputError(f"cannot generate input {name} with shape {shape!r}")
    # numpy draws float64 and then converts: both copies exist at once.
    needed = sum(
        math.prod(shape) * (8 + numpy_dtype(dtypes[name]).itemsize)
        for name, shape in shapes.items()
    )
    check_allocation(needed, "generating the inputs")
    generator = np.random.default_rng(seed)
    arrays = {}
    for name, shape in shapes.items():
        kind = numpy_dtype(dtypes[name])
        if dtypes[name] in INTEGER_TYPES:
            low, high = ranges[name]
            arrays[name] = generator.integers(low, high, shape, dtype=kind)
        elif dtypes[name] == "bool":
            arrays[name] = generator.random(shape) < 0.5
        else:
            arrays[name] = generator.standard_normal(shape).astype(kind)
    return arrays


def check_arrays(
    arrays: Mapping[str, np.ndarray],
    specs: Iterable[ArraySpec],
    smallest: Mapping[str, int] | None = None,
    largest: Mapping[str, int] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Check names, ranks, sizes and dtypes against ``specs``; fill omitted optional inputs with
    zeros, and omitted inputs of a dim whose smallest size is 0 (a KV cache) empty along it.

    Symbolic dims must agree across inputs (both ``batch`` axes the same size),
    reach their ``smallest`` sizes and stay within their ``largest`` (a file's
    metadata records both).
    Returns the complete arrays and notes worth telling the user (non-finite values).
    """
    specs = list(specs)
    known = {spec.name for spec in specs}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise UserInputError(f"unknown input {unknown[0]!r}; inputs: {', '.join(sorted(known))}")
    bound: dict[str, tuple[int, str]] = {}
    complete: dict[str, np.ndarray] = {}
    notes = []
    for spec in specs:
        if spec.name not in arrays:
            continue
        array = arrays[spec.name]
        expected = numpy_dtype(spec.dtype)
        if spec.dtype == "bfloat16" and array.dtype == np.float32:
            # numpy cannot save bfloat16 arrays to reload, so float32 ones stand in.
            array = array.astype(expected)
            notes.append(f"input {spec.name}: float32 values rounded to bfloat16")
        if array.dtype != expected:
            # numpy has no bfloat16: float32 arrays stand in for it (above).
            saved_as = "float32" if spec.dtype == "bfloat16" else spec.dtype
            raise UserInputError(
                f"input {spec.name} must be {spec.dtype}, got {array.dtype}; convert it "
                f"before saving it (array.astype(numpy.{saved_as}))"
            )
        if array.ndim != len(spec.dims):
            raise UserInputError(
                f"input {spec.name} must have {len(spec.dims)} dims ({_describe(spec.dims)}), "
                f"got shape {tuple(array.shape)}"
            )
        for axis, (dim, size) in enumerate(zip(spec.dims, array.shape, strict=True)):
            if isinstance(dim, int):
                if size != dim:
                    raise UserInputError(f"input {spec.name} axis {axis} must be {dim}, got {size}")
            elif dim in bound and bound[dim][0] != size:
                raise UserInputError(
                    f"dim {dim} is {bound[dim][0]} in input {bound[dim][1]} but {size} in input {spec.name}"
                )
            else:
                bound.setdefault(dim, (size, spec.name))
            # Only a dim whose smallest size is 0 may be empty (a KV cache's past).
            if size == 0 and (isinstance(dim, int) or (smallest or {}).get(dim, 1) > 0):
                raise UserInputError(f"input {spec.name} axis {axis} is empty")
        if spec.values is not None:
            _check_values(spec.name, array, spec.values)
        elif not np.isfinite(array).all():
            notes.append(f"input {spec.name} holds NaN or Inf values")
        complete[spec.name] = array
    for dim, (size, holder) in bound.items():
        most = (largest or {}).get(dim)
        if most is not None and size > most:
            raise UserInputError(
                f"dim {dim} is {size} in input {holder}, but must be at most {most} "
                "(the largest size the model declares, recorded in the file)"
            )
        least = (smallest or {}).get(dim, 1)
        if size < least:
            raise UserInputError(
                f"dim {dim} is {size} in input {holder}, but must be at least {least} "
                "(the smallest size the layer takes, recorded in the file)"
            )
    for spec in specs:
        if spec.name in complete:
            continue
        # A state that may be empty (a KV cache's past, smallest 0) left out is empty: the prefill.
        empty = [
            dim
            for dim in spec.dims
            if isinstance(dim, str)
            and (smallest or {}).get(dim, 1) == 0
            and bound.get(dim, (0, ""))[0] == 0
        ]
        if not spec.optional and not empty:
            may_be_empty = [
                d for d in spec.dims if isinstance(d, str) and (smallest or {}).get(d, 1) == 0
            ]
            hint = (
                f"; {may_be_empty[0]} may be 0: leave out every input of that dim for an empty one"
                if may_be_empty
                else ""
            )
            raise UserInputError(f"input {spec.name} is required ({_describe(spec.dims)}){hint}")
        for dim in empty:
            bound.setdefault(dim, (0, spec.name))
        unbound = [dim for dim in spec.dims if isinstance(dim, str) and dim not in bound]
        if unbound:
            raise UserInputError(
                f"cannot fill {'optional ' if spec.optional else ''}input {spec.name}: "
                f"dim {unbound[0]} is unknown"
            )
        shape = tuple(dim if isinstance(dim, int) else bound[dim][0] for dim in spec.dims)
        dtype = numpy_dtype(spec.dtype)
        # A file's fixed dims are its own to choose: 2**32 zeros would be 16 GiB.
        check_allocation(
            math.prod(shape) * dtype.itemsize,
            f"filling optional input {spec.name} {shape} with zeros",
        )
        complete[spec.name] = np.zeros(shape, dtype=dtype)
    return complete, notes


def _check_values(name: str, array: np.ndarray, values: tuple[int, int]) -> None:
    """Refuse an integer input holding a value outside ``values`` (an id beyond the table)."""
    low, high = values
    outside = (array < low) | (array >= high)
    if outside.any():
        index = [int(i) for i in np.argwhere(outside)[0]]
        raise UserInputError(
            f"input {name} holds {int(array[tuple(index)])} at {index}; its values must be "
            f"from {low} to {high - 1}"
        )


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of an element type's name; bfloat16 is ml_dtypes' (numpy has none)."""
    return PRECISIONS[name].numpy_dtype if name in PRECISIONS else np.dtype(name)


def savable(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays an ``.npz`` can hold and numpy reload: bfloat16 ones become float32 (exactly).

    Returns the arrays and a note for each one converted.
    """
    converted = {
        name: array.astype(np.float32) if array.dtype == numpy_dtype("bfloat16") else array
        for name, array in arrays.items()
    }
    notes = [
        f"output {name} is bfloat16, saved as float32 (numpy cannot reload bfloat16)"
        for name, array in arrays.items()
        if converted[name] is not array
    ]
    return converted, notes


def _describe(dims: tuple[str | int, ...]) -> str:
    return " x ".join(str(dim) for dim in dims)


def summarize(array: np.ndarray) -> dict[str, object]:
    """Shape, dtype and summary statistics of an output, for printing."""
    dtype = str(array.dtype)
    if array.dtype == numpy_dtype("bfloat16"):
        array = array.astype(np.float32)  # exact; numpy's reductions need a numpy dtype
    finite = array[np.isfinite(array)]
    stats = {
        "shape": list(array.shape),
        "dtype": dtype,
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "std": float(finite.std()) if finite.size else float("nan"),
        "min": float(finite.min()) if finite.size else float("nan"),
        "max": float(finite.max()) if finite.size else float("nan"),
        "non_finite": int(array.size - finite.size),
    }
    return stats

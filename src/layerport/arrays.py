"""Input and output arrays: generating them from a seed, and reading them from files.

numpy only, no torch, so that ``run``, ``verify`` and the torch-free ``infer``
draw and read inputs the same way.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerport.errors import BadFile, UserInputError

NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class ArraySpec:
    """What an input must look like: its name, its dims (symbolic or sized) and dtype."""

    name: str
    dims: tuple[str | int, ...]
    dtype: str
    optional: bool = False


def random_arrays(
    shapes: Mapping[str, tuple[int, ...]], dtype: str, seed: int
) -> dict[str, np.ndarray]:
    """Standard-normal arrays, the same for the same seed in any process."""
    generator = np.random.default_rng(seed)
    return {
        name: generator.standard_normal(shape).astype(NUMPY_DTYPES[dtype])
        for name, shape in shapes.items()
    }


def read_input_files(options: Iterable[str]) -> dict[str, np.ndarray]:
    """Read ``NAME=FILE.npy`` and ``FILE.npz`` options into named arrays.

    Files are read with ``allow_pickle=False``: an array of Python objects would
    otherwise run code from the file.
    """
    arrays: dict[str, np.ndarray] = {}
    for option in options:
        name, separator, filename = option.partition("=")
        if separator:
            loaded = {name.strip(): _load(Path(filename), expect_npz=False)[""]}
        else:
            loaded = _load(Path(option), expect_npz=True)
        for key, array in loaded.items():
            if key in arrays:
                raise UserInputError(f"input {key} is given twice")
            arrays[key] = array
    return arrays


def _load(path: Path, *, expect_npz: bool) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise BadFile(
            f"input file {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise BadFile(
                f"{path} holds Python objects (a pickle); layerport reads only numeric arrays"
            ) from error
        raise BadFile(f"{path} is not a valid .npy or .npz file: {error}") from error
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise BadFile(f"{path} is not a valid .npy or .npz file") from error
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            try:
                arrays = {key: loaded[key] for key in loaded.files}
            except ValueError as error:
                raise BadFile(
                    f"{path} holds Python objects (a pickle); layerport reads only numeric arrays"
                ) from error
            except Exception as error:
                raise BadFile(f"{path} is a damaged .npz file: {error}") from error
        if not expect_npz:
            raise BadFile(f"{path} is an .npz archive; pass it as --input {path} without NAME=")
        return arrays
    if expect_npz:
        raise BadFile(f"{path} is a single array; pass it as --input NAME={path}")
    return {"": loaded}


def check_arrays(
    arrays: Mapping[str, np.ndarray], specs: Iterable[ArraySpec]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Check names, ranks, sizes and dtypes against ``specs``; fill omitted optional inputs with zeros.

    Symbolic dims must agree across inputs (both ``batch`` axes the same size).
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
        expected = np.dtype(spec.dtype)
        if array.dtype != expected:
            raise UserInputError(f"input {spec.name} must be {spec.dtype}, got {array.dtype}")
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
            if size == 0:
                raise UserInputError(f"input {spec.name} axis {axis} is empty")
        if not np.isfinite(array).all():
            notes.append(f"input {spec.name} holds NaN or Inf values")
        complete[spec.name] = array
    for spec in specs:
        if spec.name in complete:
            continue
        if not spec.optional:
            raise UserInputError(f"input {spec.name} is required ({_describe(spec.dims)})")
        unbound = [dim for dim in spec.dims if isinstance(dim, str) and dim not in bound]
        if unbound:
            raise UserInputError(
                f"cannot fill optional input {spec.name}: dim {unbound[0]} is unknown"
            )
        shape = tuple(dim if isinstance(dim, int) else bound[dim][0] for dim in spec.dims)
        complete[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return complete, notes


def _describe(dims: tuple[str | int, ...]) -> str:
    return " x ".join(str(dim) for dim in dims)


def summarize(array: np.ndarray) -> dict[str, object]:
    """Shape, dtype and summary statistics of an output, for printing."""
    finite = array[np.isfinite(array)]
    stats = {
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "std": float(finite.std()) if finite.size else float("nan"),
        "min": float(finite.min()) if finite.size else float("nan"),
        "max": float(finite.max()) if finite.size else float("nan"),
        "non_finite": int(array.size - finite.size),
    }
    return stats

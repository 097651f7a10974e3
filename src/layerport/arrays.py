"""Input and output arrays: generating them from a seed, and reading them from files.

numpy only, no torch, so that ``run``, ``verify`` and the torch-free ``infer``
draw and read inputs the same way.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from layerport.errors import BadFile, UserInputError, one_line
from layerport.limits import check_allocation

NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64}
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members, an empty one


@dataclass(frozen=True)
class ArraySpec:
    """What an input must look like: its name, its dims (symbolic or sized) and dtype."""

    name: str
    dims: tuple[str | int, ...]
    dtype: str
    optional: bool = False


def random_arrays(
    shapes: Mapping[str, tuple[int, ...]], dtype: str | Mapping[str, str], seed: int
) -> dict[str, np.ndarray]:
    """Standard-normal arrays, the same for the same seed in any process.

    ``dtype`` is one dtype for every array, or each array's dtype by name. One
    generator draws every array in turn, so the values do not depend on dtypes.
    Refused before drawing if they would not fit in the memory limit: the shapes
    may come from a file's metadata or a ``--dim`` option.
    """
    dtypes = {name: dtype if isinstance(dtype, str) else dtype[name] for name in shapes}
    for name, shape in shapes.items():
        if dtypes[name] not in NUMPY_DTYPES:
            raise UserInputError(
                f"only float32 and float64 inputs can be generated, not {dtypes[name]}"
            )
        if not all(isinstance(size, int) and not isinstance(size, bool) for size in shape) or any(
            size < 0 for size in shape
        ):
            raise UserInputError(f"cannot generate input {name} with shape {shape!r}")
    # numpy draws float64 and then converts: both copies exist at once.
    needed = sum(
        math.prod(shape) * (8 + np.dtype(NUMPY_DTYPES[dtypes[name]]).itemsize)
        for name, shape in shapes.items()
    )
    check_allocation(needed, "generating the inputs")
    generator = np.random.default_rng(seed)
    return {
        name: generator.standard_normal(shape).astype(NUMPY_DTYPES[dtypes[name]])
        for name, shape in shapes.items()
    }


def read_input_files(options: Iterable[str]) -> dict[str, np.ndarray]:
    """Read ``NAME=FILE.npy`` and ``FILE.npz`` options into named arrays.

    layerport parses each array's header itself before numpy reads the data: an
    array of Python objects is refused (unpickling it would run code from the
    file), and so is one whose header promises more bytes than the file holds or
    than ``LAYERPORT_MAX_MEMORY`` allows, before anything is allocated.
    """
    arrays: dict[str, np.ndarray] = {}
    budget = _Budget()
    for option in options:
        name, separator, filename = option.partition("=")
        if separator:
            loaded = {name.strip(): _load(Path(filename), budget, expect_npz=False)[""]}
        else:
            loaded = _load(Path(option), budget, expect_npz=True)
        for key, array in loaded.items():
            if key in arrays:
                raise UserInputError(f"input {key} is given twice")
            arrays[key] = array
    return arrays


class _Budget:
    """The bytes every array read so far will take, checked against the memory limit."""

    def __init__(self) -> None:
        self.total = 0

    def reserve(self, size: int, what: str) -> None:
        self.total += size
        check_allocation(self.total, what)


def _load(path: Path, budget: _Budget, *, expect_npz: bool) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise BadFile(
            f"input file {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
            handle.seek(0)
            if magic == NPY_MAGIC:
                if expect_npz:
                    raise BadFile(f"{path} is a single array; pass it as --input NAME={path}")
                size = os.fstat(handle.fileno()).st_size
                return {"": _read_array(lambda: path.open("rb"), size, str(path), budget)}
            if magic[:4] in ZIP_MAGICS:
                if not expect_npz:
                    raise BadFile(
                        f"{path} is an .npz archive; pass it as --input {path} without NAME="
                    )
                return _read_npz(handle, path, budget)
    except OSError as error:
        raise BadFile(f"cannot read {path}: {error.strerror or error}") from error
    raise BadFile(
        f"{path} is not an .npy or .npz file"
        + (" (it is empty)" if not magic else " (save arrays with numpy.save or numpy.savez)")
    )


def _read_npz(handle: BinaryIO, path: Path, budget: _Budget) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(handle) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            arrays = {}
            for info in members:
                if not info.filename.endswith(".npy"):
                    raise BadFile(f"{path} holds {info.filename!r}, which is not an .npy array")
                key = info.filename.removesuffix(".npy")
                arrays[key] = _read_array(
                    functools.partial(archive.open, info),
                    info.file_size,
                    f"{path} (array {key})",
                    budget,
                )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as error:
        raise BadFile(f"{path} is a damaged .npz file: {one_line(error)}") from error
    if not arrays:
        raise BadFile(f"{path} holds no arrays")
    return arrays


def _read_array(
    open_array: Callable[[], IO[bytes]], size: int, what: str, budget: _Budget
) -> np.ndarray:
    """Check an .npy header (dtype, size against the file and the limit), then read it."""
    try:
        with open_array() as header:
            version = np.lib.format.read_magic(header)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(header)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(header)
            data_start = header.tell()
        if dtype.hasobject:
            raise BadFile(
                f"{what} holds Python objects (a pickle); layerport reads only numeric arrays"
            )
        needed = math.prod(shape) * dtype.itemsize
        if data_start + needed > size:
            raise BadFile(
                f"{what} is truncated: its header promises {needed} bytes of data, "
                f"the file holds {max(size - data_start, 0)}"
            )
        budget.reserve(needed, f"reading {what}")
        with open_array() as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)
    except (ValueError, EOFError, KeyError, SyntaxError) as error:
        raise BadFile(f"{what} is not a valid .npy array: {one_line(error)}") from error


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

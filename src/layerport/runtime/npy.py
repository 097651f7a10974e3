"""Reading ``.npy`` and ``.npz`` files that strangers hand our users, without unpickling.

numpy only, no torch. Each array's header is parsed before numpy reads the data.
"""

from __future__ import annotations

import functools
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from layerport.errors import BadFile, Setting, UserInputError, one_line
from layerport.runtime.limits import check_allocation

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members, an empty one


def read_arrays(sources: Iterable[tuple[str | None, Path]]) -> dict[str, np.ndarray]:
    """Read named ``.npy`` files and ``.npz`` archives into named arrays.

    Each source is ``(name, path)`` for one ``.npy`` array, or ``(None, path)``
    for an ``.npz`` archive whose arrays keep their own names. layerport parses each array's header itself before numpy reads the data: an
    array of Python objects is refused (unpickling it would run code from the
    file), and so is one whose header promises more bytes than the file holds or
    than ``LAYERPORT_MAX_MEMORY`` allows, before anything is allocated.
    """
    arrays: dict[str, np.ndarray] = {}
    budget = _Budget()
    for name, path in sources:
        if name is not None:
            loaded = {name: _load(path, budget, expect_npz=False)[""]}
        else:
            loaded = _load(path, budget, expect_npz=True)
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
                    raise BadFile(
                        f"{path} is a single array; pass it as ", Setting("inputs", f"NAME={path}")
                    )
                size = os.fstat(handle.fileno()).st_size
                return {"": _read_array(lambda: path.open("rb"), size, str(path), budget)}
            if magic[:4] in ZIP_MAGICS:
                if not expect_npz:
                    raise BadFile(
                        f"{path} is an .npz archive; pass it as ",
                        Setting("inputs", str(path)),
                        " without NAME=",
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
    except (
        zipfile.BadZipFile,  # also a member whose CRC does not match
        zipfile.LargeZipFile,
        zlib.error,  # a deflated member that does not inflate
        EOFError,
        NotImplementedError,  # a compression method zipfile lacks
        RuntimeError,  # an encrypted member
        OSError,
        ValueError,
    ) as error:
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
    except (
        ValueError,
        EOFError,
        KeyError,
        SyntaxError,
        TypeError,
        OverflowError,
        tokenize.TokenError,  # numpy tokenizes the header's dict literal
    ) as error:
        raise BadFile(f"{what} is not a valid .npy array: {one_line(error)}") from error

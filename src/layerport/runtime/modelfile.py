"""Reading ONNX files that strangers hand our users, without trusting them.

``read_model`` returns a validated, self-contained ``ModelProto`` (or, for a
model whose external data is past protobuf's 2 GiB, an ``ExternalModel``: the
proto and that data as arrays), or raises ``BadFile`` with one line that says
what is wrong. Before onnxruntime ever sees a
model, layerport:

- refuses empty files (onnx parses zero bytes as an empty model), garbage, and
  IR or opset versions this onnx does not know (onnxruntime 1.32 accepts the same
  ranges as onnx 1.23: IR 3 to 14, ai.onnx opset up to 28);
- inlines every external-data tensor through onnx's own loader
  (``load_external_data_for_tensor``, onnx 1.23), which opens it in C++ and
  refuses absolute paths, ``..``, symlinks (any, with ``openat2`` where the kernel
  has it), FIFOs and other files that are not regular, hard links, and offsets or
  lengths past the end of the file. onnxruntime reads a hard link to any file the
  user can read when handed the path, and resolves locations against the current
  directory when handed bytes, so it is never given the chance. layerport adds
  what onnx leaves out: it refuses unknown or repeated keys (onnx warns, or lets
  the last one win), a length that does not match the tensor's shape and type,
  and more than the memory limit in all, before onnx reads a byte; and it says in one line,
  in its own words, why onnx refused a file;
- checks every tensor's ``raw_data`` size against its shape, then runs
  ``onnx.checker`` with ``full_check`` for unknown ops, dangling inputs and types.

Models are parsed in-process, and onnx's checker (with its C++ shape
inference) runs in a forked child first: issue 30's campaign found files that
abort it (SIGABRT in ``std::clamp``, for a size declared -1, which is now also
refused before the checker runs). Valid files can still crash onnxruntime's
session creation, which ``runtime.session`` guards against and
``runtime.isolation`` contains.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_tensor

from layerport.dtypes import element_bits
from layerport.errors import BadFile, one_line
from layerport.runtime import external, isolation
from layerport.runtime.external import ExternalModel, checkable_skeleton, mark_external
from layerport.runtime.limits import check_allocation

MAX_MODEL_BYTES = 2**31 - 1  # protobuf cannot serialize a larger message
MAX_EXTERNAL_BYTES = 2**63 - 1  # data held outside the proto: bounded by the memory limit
MIN_IR_VERSION = 3  # the first IR version with opset imports
KNOWN_DOMAINS: dict[str, tuple[int, int]] = {
    domain: (low, high) for domain, (low, high) in onnx.defs.C.schema_version_map().items()
}
KNOWN_DOMAINS["ai.onnx"] = KNOWN_DOMAINS[""]
KNOWN_DOMAINS["com.microsoft"] = (1, 1)  # onnxruntime's contrib ops
EXTERNAL_DATA_KEYS = {"location", "offset", "length", "checksum"}


def read_model(path: Path) -> onnx.ModelProto | ExternalModel:
    """Read and validate an ONNX file; external data is read into memory.

    A model that fits in one proto (2 GiB) comes back whole, its external data
    inlined. One whose external data does not fit comes back as an
    ``ExternalModel``: the file's initializers held outside it stay there,
    read (through the same checks) into arrays.
    """
    name = str(path)
    model = parse_model(_read_bytes(path), name)
    folder = path.resolve().parent
    budget = MAX_MODEL_BYTES - model.ByteSize()
    outside = [
        tensor for tensor in model.graph.initializer if tensor.data_location == TensorProto.EXTERNAL
    ]
    declared = sum(_expected_bytes(tensor) or 0 for tensor in outside)
    arrays: dict[str, np.ndarray] = {}
    if declared > min(budget, external.INLINE_LIMIT):
        check_allocation(declared, f"reading the external data of {name}")
        for tensor in outside:
            if tensor.name in arrays:
                raise BadFile(f"{name}: two of its initializers are named {tensor.name!r}")
            arrays[tensor.name] = _external_array(tensor, folder, name)
            # Held in memory from now on: the skeleton no longer names the file.
            mark_external(tensor, external.IN_MEMORY, 0, arrays[tensor.name].nbytes)
    for tensor in _all_tensors(model):
        if _held_in_memory(tensor, arrays):
            continue
        if tensor.data_location == TensorProto.EXTERNAL:
            budget -= _inline_external_data(tensor, folder, name, budget)
        elif len(tensor.external_data):
            raise BadFile(f"{path}: tensor {tensor.name!r} lists external data but is not external")
        _check_raw_data_size(tensor, name)
    _check_values_defined(model.graph, set(), name)
    _check_declared_dims(model.graph, name)
    if not arrays:
        _check_model(model, name)
        return model
    held = ExternalModel(model, arrays)
    _check_model(checkable_skeleton(held), name)
    return held


def _held_in_memory(tensor: TensorProto, arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether ``tensor`` is one of the initializers ``read_model`` read into ``arrays``."""
    return (
        tensor.name in arrays
        and tensor.data_location == TensorProto.EXTERNAL
        and tensor.external_data[0].value == external.IN_MEMORY
    )


def _check_declared_dims(graph: onnx.GraphProto, name: str) -> None:
    """Refuse a negative size declared for any value: onnx 1.23's inference aborts on some."""
    for inner in iter_graphs(graph):
        for value in [*inner.input, *inner.output, *inner.value_info]:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value < 0:
                    raise BadFile(
                        f"{name} is not a valid ONNX model: it declares axis {axis} of "
                        f"{value.name!r} as {dim.dim_value} (a size cannot be negative)"
                    )


def _check_model(model: onnx.ModelProto, name: str) -> None:
    """Run onnx's checker, with shape inference, where a native abort cannot end layerport.

    onnx 1.23's shape inference aborts the process on some malformed files (a
    failed ``std::clamp`` assertion, SIGABRT, for a ``Shape`` feeding a ``Slice``
    with a dim declared -1), and no ``try`` catches a signal. The check runs
    first in a forked child, which costs the fork; a check that finished there
    is not repeated, one that raised is repeated here for its message.
    """

    def check() -> None:
        onnx.checker.check_model(model, full_check=True)

    outcome = isolation.outcome_in_child(check)
    if isinstance(outcome, isolation.ChildCrash):
        raise BadFile(
            f"{name} is not a valid ONNX model: onnx {onnx.__version__}'s checker "
            f"{outcome.words()} reading it"
        )
    if outcome:
        return
    try:
        check()
    except Exception as error:
        raise BadFile(f"{name} is not a valid ONNX model: {one_line(error)}") from error


def parse_model(data: bytes, name: str) -> onnx.ModelProto:
    """Parse bytes into a model and check what onnx.load does not: structure and versions."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise BadFile(
            f"{name} is not an ONNX model (it does not parse: {one_line(error)})"
        ) from error
    if not model.HasField("graph") or not model.graph.node or not model.graph.output:
        raise BadFile(f"{name} is not an ONNX model (it holds no graph)")
    if not _text_is_valid(model):
        raise BadFile(f"{name} is not a valid ONNX model (a name or text field is not UTF-8)")
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        raise BadFile(
            f"{name} has IR version {model.ir_version}; this installation reads "
            f"{MIN_IR_VERSION} to {onnx.IR_VERSION}"
        )
    if not model.opset_import:
        raise BadFile(f"{name} declares no opset")
    domains = set()
    for opset in model.opset_import:
        domain = opset.domain or "ai.onnx"
        if domain in domains:
            raise BadFile(f"{name} declares opset domain {domain!r} twice")
        domains.add(domain)
        if domain not in KNOWN_DOMAINS:
            raise BadFile(
                f"{name} uses operator domain {domain!r}, which onnxruntime does not know"
            )
        low, high = KNOWN_DOMAINS[domain]
        if not low <= opset.version <= high:
            raise BadFile(
                f"{name} needs opset {opset.version} of {domain}; this installation supports {low} to {high}"
            )
    return model


def _read_bytes(path: Path) -> bytes:
    # O_NONBLOCK: opening a named pipe would otherwise wait for a writer forever.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise BadFile(f"{path} does not exist") from None
    except OSError as error:
        raise BadFile(f"cannot read {path}: {error.strerror}") from error
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise BadFile(
            f"{path} is a folder, not an ONNX file"
            if stat.S_ISDIR(info.st_mode)
            else f"{path} is not a regular file"
        )
    with os.fdopen(descriptor, "rb") as handle:
        if info.st_size == 0:
            raise BadFile(f"{path} is empty")
        if info.st_size > MAX_MODEL_BYTES:
            raise BadFile(f"{path} is larger than 2 GiB")
        try:
            return handle.read()
        except OSError as error:
            raise BadFile(f"cannot read {path}: {error.strerror}") from error


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and every subgraph inside it (a Scan's or an If's bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_graphs(subgraph)


def _text_is_valid(message: Message) -> bool:
    """False if any string field holds bytes that are not UTF-8.

    ONNX is proto2, where protobuf parses such a field and hands Python ``bytes``
    instead of ``str``; every reader of names and metadata would then fail.
    """
    stack = [message]
    while stack:
        current = stack.pop()
        for descriptor, value in current.ListFields():
            if descriptor.type == FieldDescriptor.TYPE_STRING:
                values = [value] if isinstance(value, (str, bytes)) else value
                if not all(isinstance(item, str) for item in values):
                    return False
            elif isinstance(value, Message):
                stack.append(value)
            elif descriptor.message_type is not None:
                stack.extend(value)
    return True


def _check_values_defined(graph: onnx.GraphProto, outer: set[str], name: str) -> None:
    """Every node input must be a graph input, an initializer or an earlier node's output.

    onnx.checker reports the same problem as a graph that is "not topologically
    sorted", which hides the usual cause: an initializer missing from the file.
    """
    known = set(outer)
    known.update(value.name for value in graph.input)
    known.update(tensor.name for tensor in graph.initializer)
    known.update(sparse.values.name for sparse in graph.sparse_initializer)
    for node in graph.node:
        for value in node.input:
            if value and value not in known:
                raise BadFile(
                    f"{name}: node {node.name or node.op_type!r} reads {value!r}, which no "
                    "initializer, graph input or earlier node provides (a missing initializer?)"
                )
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*subgraphs, *attribute.graphs]:
                _check_values_defined(subgraph, known, name)
        known.update(value for value in node.output if value)


def _all_tensors(message: Message) -> Iterator[TensorProto]:
    """Every tensor anywhere in a model: initializers, sparse ones, attributes, subgraphs."""
    stack = [message]
    while stack:
        current = stack.pop()
        if isinstance(current, TensorProto):
            yield current
            continue
        for descriptor, value in current.ListFields():
            if descriptor.message_type is None:
                continue
            if isinstance(value, Message):
                stack.append(value)
            else:
                stack.extend(item for item in value if isinstance(item, Message))


def _inline_external_data(tensor: TensorProto, folder: Path, name: str, budget: int) -> int:
    """Have onnx read one external tensor from inside ``folder`` into ``raw_data``."""
    data = _external_data(tensor, folder, name, budget)
    assert isinstance(data, bytes)
    tensor.raw_data = data
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]
    return len(data)


def _external_array(tensor: TensorProto, folder: Path, name: str) -> np.ndarray:
    """One external tensor's data, from inside ``folder``, as an array of its shape."""
    data = _external_data(tensor, folder, name, MAX_EXTERNAL_BYTES, into_array=True)
    assert isinstance(data, np.ndarray)
    return data


def _external_data(
    tensor: TensorProto, folder: Path, name: str, budget: int, *, into_array: bool = False
) -> bytes | np.ndarray:
    """One external tensor's data, checked, as bytes, or ``into_array`` as an array.

    onnx opens the file (refusing links and paths that leave ``folder``) and
    reads the bytes; an array is read by layerport after onnx has opened the
    file and found the data inside it, so that the data is copied only once.
    """

    def refuse(reason: str) -> BadFile:
        return BadFile(f"{name}: external data of tensor {tensor.name!r} {reason}")

    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        # onnx would ignore an unknown key with a warning, and let a repeated one win.
        if entry.key not in EXTERNAL_DATA_KEYS or entry.key in entries:
            raise refuse(f"has an unknown or repeated key {entry.key!r}")
        entries[entry.key] = entry.value
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise refuse("has an offset or length that is not a number") from None
    if offset < 0 or (length is not None and length < 0):
        raise refuse("has a negative offset or length")
    location = entries.get("location", "")
    parts = _location_parts(location, refuse)
    try:
        str(folder).encode()
    except UnicodeEncodeError:  # onnx takes the folder as UTF-8 text
        raise refuse(
            "cannot be read: onnx reads external data only from folders named in UTF-8"
        ) from None

    def read(start: int, size: int) -> bytes:
        try:
            return _read_with_onnx(tensor.name, folder, location, start, size)
        except Exception as error:  # onnx's ValidationError, ValueError, OSError...
            raise refuse(_refusal(folder, parts, location, start + size, error)) from error

    expected = _expected_bytes(tensor)
    if expected is None:
        raise refuse("has a type or shape that gives no size in bytes")
    if length is not None and length != expected:
        # Refused either way. onnx opens the file and checks where the data ends,
        # reading nothing, so that a link or a short file is named first.
        read(offset + length, 0)
        raise refuse(f"is {length} bytes, but its shape and type need {expected}")
    if expected > budget:
        raise BadFile(f"{name}: with its external data the model exceeds 2 GiB")
    data: bytes | np.ndarray
    if into_array:
        read(offset + expected, 0)  # onnx's checks of the path and the size, reading nothing
        data = _read_array(folder.joinpath(*parts), offset, tensor, expected, refuse)
    else:
        data = read(offset, expected)  # never more than the shape needs
    if length is None:  # then the data runs to the end of the file
        try:
            size = folder.joinpath(*parts).lstat().st_size
        except OSError as error:
            raise refuse(f"at {location!r} cannot be opened: {error.strerror}") from error
        if size != offset + expected:
            raise refuse(f"is {size - offset} bytes, but its shape and type need {expected}")
    return data


def _read_array(
    path: Path, offset: int, tensor: TensorProto, size: int, refuse: Callable[[str], BadFile]
) -> np.ndarray:
    """``size`` bytes at ``offset`` of ``path`` as ``tensor``'s array (bfloat16 as 16-bit words).

    onnx has just checked the path; the file is opened again without following
    a link, and checked again for what onnx refuses, in case it was swapped.
    """
    try:
        dtype = (
            np.dtype(np.uint16)
            if tensor.data_type == TensorProto.BFLOAT16
            else np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        )
    except (KeyError, TypeError, ValueError):
        dtype = np.dtype(object)
    if dtype.kind not in "biuf" or dtype.itemsize * math.prod(tensor.dims) != size:
        raise refuse("has a type that layerport does not read past 2 GiB")
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise refuse(f"cannot be opened: {error.strerror}") from error
    with os.fdopen(descriptor, "rb", buffering=0) as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size < offset + size:
            raise refuse("changed while it was read")
        data = np.empty(size, dtype=np.uint8)
        handle.seek(offset)
        view, done = data.data, 0
        while done < size:
            count = handle.readinto(view[done:])
            if not count:
                raise refuse("changed while it was read")
            done += count
    return data.view(dtype).reshape(tuple(tensor.dims))


def _location_parts(location: str, refuse: Callable[[str], BadFile]) -> list[str]:
    """The folders and file of a location, refused in our words where onnx's are cryptic."""
    # onnx would read "a.bin" for "a.bin\x00b"; a backslash separates folders on Windows.
    if not location or "\x00" in location or "\\" in location:
        raise refuse(f"has an invalid location {location!r}")
    if os.path.isabs(location) or location[1:2] == ":":
        raise refuse(
            f"has an absolute location {location!r}; only paths inside the model's folder are read"
        )
    parts = [part for part in location.split("/") if part not in ("", ".")]
    # Stricter than onnx, which reads "sub/../a.bin" as "a.bin".
    if not parts or ".." in parts:
        raise refuse(f"has location {location!r}, which leaves the model's folder")
    return parts


def _read_with_onnx(name: str, folder: Path, location: str, offset: int, length: int) -> bytes:
    # A scratch tensor holds only the keys onnx knows, so it has nothing to warn about.
    scratch = TensorProto(name=name, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        scratch.external_data.add(key=key, value=str(value))
    load_external_data_for_tensor(scratch, str(folder))
    return scratch.raw_data


def _refusal(folder: Path, parts: list[str], location: str, end: int, error: Exception) -> str:
    """Why onnx refused to read ``location`` up to byte ``end``, in layerport's words.

    onnx has decided; the files are looked at again only to word its reason.
    """
    path = folder
    for part in parts:
        path = path / part
        try:
            info = path.lstat()
        except OSError as lstat_error:
            return f"at {location!r} cannot be opened: {lstat_error.strerror}"
        if stat.S_ISLNK(info.st_mode):
            return f"at {location!r} cannot be opened: is a symbolic link"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_nlink != 1:
        return f"is a file with {info.st_nlink} hard links (it may be a link to a file elsewhere)"
    if end > info.st_size:
        return f"at {location!r} reaches byte {end}, past the end of its {info.st_size}-byte file"
    return f"at {location!r} cannot be read: {one_line(error)}"


def _expected_bytes(tensor: TensorProto) -> int | None:
    """The ``raw_data`` size of a tensor's shape and type; None if they give none."""
    bits = element_bits(tensor.data_type)
    if bits is None or any(dim < 0 for dim in tensor.dims):
        return None
    return -(-math.prod(tensor.dims) * bits // 8)  # packed types round up to a whole byte


def _check_raw_data_size(tensor: TensorProto, name: str) -> None:
    # The checker only notices raw_data that is too short; too long is as suspicious.
    if tensor.HasField("raw_data"):
        expected = _expected_bytes(tensor)
        if expected is not None and len(tensor.raw_data) != expected:
            raise BadFile(
                f"{name}: tensor {tensor.name!r} holds {len(tensor.raw_data)} bytes, "
                f"but its shape and type need {expected}"
            )

"""Parameters and buffers of a TorchScript archive, read without running its code.

``torch.jit.save`` writes a zip: ``code/`` holds the modules' TorchScript
source, ``data.pkl`` pickles the module tree (each module a ``__torch__.*``
object whose state is a dict of attributes) and ``data/N`` holds each storage's
bytes. ``torch.jit.load`` compiles and runs that code, so it is never called:
``data.pkl`` is read by an unpickler that resolves only the globals that build
tensors, and every module becomes a plain record of its attributes. Which
attributes are parameters and which buffers, the archive says in each class's
``__parameters__`` and ``__buffers__`` lines, read as text (parsed as literals,
never run); the tensors are then named as ``state_dict()`` names them
(``head.0.weight``): a module's parameters, its buffers, then its submodules.
"""

from __future__ import annotations

import ast
import collections
import io
import math
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from layerport.errors import BadFile

if TYPE_CHECKING:
    import torch

# torch.jit.save pickles its typed lists through these; each has a plain equivalent.
_LIST_BUILDERS = {
    "build_intlist",
    "build_doublelist",
    "build_boollist",
    "build_tensorlist",
    "build_genericlist",
}
_LARGEST_RANK = 64
_DEEPEST = 200  # modules nested deeper than this are a hostile file's, not a model's
# The storage classes a persistent id may name, and the dtype of each.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}
_CLASS = re.compile(r"^class (\w+)\(")
_MEMBER_LIST = re.compile(r"^\s+(__parameters__|__buffers__) = (\[.*\])\s*$")


def is_torchscript_archive(names: list[str]) -> bool:
    """Whether a zip's member names are a ``torch.jit.save`` archive's: ``data.pkl`` beside ``code/``."""
    roots = {name.split("/", 1)[0] for name in names if name.count("/") == 1}
    return any(
        f"{root}/data.pkl" in names and any(n.startswith(f"{root}/code/") for n in names)
        for root in roots
    )


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """The archive's parameters and buffers, named and ordered as its ``state_dict()``.

    Raises ``BadFile`` for an archive that is damaged, whose pickle names any
    global but tensors' and modules', or whose modules' state cannot be read
    without running their code (a custom ``__setstate__``).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = next(
                n.split("/", 1)[0] for n in names if n.endswith("/data.pkl") and n.count("/") == 1
            )
            if f"{root}/byteorder" in names:
                order = archive.read(f"{root}/byteorder").decode(errors="replace").strip()
                if order != "little":
                    raise BadFile(
                        f"{path} records its byte order as {order[:20]!a}; layerport "
                        "reads little-endian archives only"
                    )
            classes = _declared_members(archive, root)
            storages = _Storages(archive, root, path)
            tree = _ArchiveUnpickler(
                io.BytesIO(archive.read(f"{root}/data.pkl")), storages, path
            ).load()
    except BadFile:
        raise
    except pickle.UnpicklingError as error:
        raise BadFile(
            f"{path} was refused: {error}; layerport never runs code from a weights file"
        ) from error
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, StopIteration) as error:
        raise BadFile(f"{path} is not a valid TorchScript archive: {_words(error)}") from error
    except Exception as error:  # malformed bytes fail wherever the unpickler stands
        raise BadFile(f"{path} is not a valid TorchScript archive: {_words(error)}") from error
    if not isinstance(tree, _Module):
        raise BadFile(f"{path} holds a {type(tree).__name__}, not a TorchScript module")
    tensors: dict[str, torch.Tensor] = {}
    _flatten(tree, "", classes, tensors, path, ())
    return tensors


def _words(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@dataclass(frozen=True)
class _Members:
    """A TorchScript class's parameters and buffers, in its declared order."""

    parameters: tuple[str, ...]
    buffers: tuple[str, ...]


def _declared_members(archive: zipfile.ZipFile, root: str) -> dict[str, _Members]:
    """Each class in ``code/`` (``__torch__.torch.nn.modules.linear.Linear``) and its members.

    Read line by line as text: the source is never compiled, let alone run.
    """
    found: dict[str, _Members] = {}
    prefix = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name.removeprefix(prefix).removesuffix(".py").replace("/", ".")
        current: str | None = None
        lists: dict[str, tuple[str, ...]] = {}
        for line in archive.read(name).decode(errors="replace").splitlines():
            heading = _CLASS.match(line)
            if heading:
                current = f"{module}.{heading.group(1)}"
                lists = {}
                continue
            member = _MEMBER_LIST.match(line)
            if current is not None and member:
                value = ast.literal_eval(member.group(2))
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise BadFile(f"class {current} declares {member.group(1)} that are not names")
                lists[member.group(1)] = tuple(value)
                if len(lists) == 2:
                    found[current] = _Members(lists["__parameters__"], lists["__buffers__"])
    return found


class _Module:
    """A ``__torch__`` module's state, as its pickle gives it: attributes by name."""

    qualified_name = ""
    attributes: dict[str, Any]

    def __new__(cls, *arguments: object) -> _Module:  # what NEWOBJ calls; __init__ it never calls
        if arguments:
            raise pickle.UnpicklingError(f"module {cls.qualified_name} built from arguments")
        instance = super().__new__(cls)
        instance.attributes = {}
        return instance


_MODULE_TYPES: dict[str, type[_Module]] = {}


def _module_type(qualified_name: str) -> type[_Module]:
    """One record type per TorchScript class, so a record knows its class's name."""
    if qualified_name not in _MODULE_TYPES:
        _MODULE_TYPES[qualified_name] = type(
            "_Module", (_Module,), {"qualified_name": qualified_name}
        )
    return _MODULE_TYPES[qualified_name]


@dataclass(frozen=True)
class _StorageType:
    """``torch.FloatStorage`` and its kin, as a persistent id names them: only a dtype."""

    name: str


class _Storages:
    """Each ``data/N`` record as an untyped storage, read once and checked against its size."""

    def __init__(self, archive: zipfile.ZipFile, root: str, path: Path) -> None:
        self.archive, self.root, self.path = archive, root, path
        self.loaded: dict[str, Any] = {}

    def load(self, pid: object) -> Any:
        import torch

        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:60]!r}")
        _, storage_type, key, _location, count = pid
        dtype = (
            getattr(torch, _STORAGE_DTYPES.get(storage_type.name, ""), None)
            if isinstance(storage_type, _StorageType)
            else None
        )
        if dtype is None or not isinstance(key, str) or not isinstance(count, int) or count < 0:
            raise pickle.UnpicklingError(f"malformed storage record {str(pid)[:60]!r}")
        if key not in self.loaded:
            record = f"{self.root}/data/{key}"
            try:
                size = self.archive.getinfo(record).file_size
            except KeyError:
                raise BadFile(f"{self.path} has no record data/{key} for a tensor") from None
            raw = self.archive.read(record)
            self.loaded[key] = (torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8), size)
        storage, size = self.loaded[key]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if count * itemsize > size:
            raise BadFile(
                f"{self.path}'s record data/{key} holds {size} bytes, not the "
                f"{count * itemsize} its tensor needs"
            )
        return _Storage(storage, dtype, size // itemsize)


@dataclass(frozen=True)
class _Storage:
    """One record's bytes, the dtype its tensors view them as, and how many elements it holds."""

    data: Any  # torch.UntypedStorage
    dtype: Any  # torch.dtype
    elements: int


def _rebuild_tensor(
    storage: Any,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    metadata: object = None,
) -> torch.Tensor:
    """torch's ``_rebuild_tensor_v2``, after checking the view stays inside its storage.

    torch grows a storage to fit a view, so a hostile size would allocate
    whatever it names; hooks and metadata are refused rather than attached.
    """
    import torch

    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    sizes, strides = _counts(size), _counts(stride)
    if sizes is None or strides is None or len(sizes) != len(strides):
        raise pickle.UnpicklingError(f"a tensor of malformed size {size!r} or stride {stride!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise pickle.UnpicklingError(f"a tensor at malformed offset {offset!r}")
    if backward_hooks or metadata:
        raise pickle.UnpicklingError("a tensor with hooks or metadata attached")
    last = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    if math.prod(sizes) and last >= storage.elements:
        raise pickle.UnpicklingError(
            f"a tensor of size {sizes} at offset {offset} reaches past its storage "
            f"of {storage.elements} elements"
        )
    return torch.empty((0,), dtype=storage.dtype).set_(storage.data, offset, sizes, strides)


def _counts(value: object) -> tuple[int, ...] | None:
    """``value`` as a tensor's sizes or strides, or ``None`` where it cannot be one."""
    if (
        isinstance(value, tuple)
        and len(value) <= _LARGEST_RANK
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)
    ):
        return value
    return None


def _plain_list(items: object) -> list[Any]:
    if not isinstance(items, list):
        raise pickle.UnpicklingError("a typed list that is not a list")
    return items


def _restore_type_tag(value: object, _type: object) -> object:
    return value


class _ArchiveUnpickler(pickle._Unpickler):
    """An unpickler that builds tensors and module records, and nothing else.

    The pure-Python unpickler, so that ``BUILD`` can be limited too: it sets
    state only on a module record, from a dict, never through ``__setstate__``.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, storages: _Storages, path: Path) -> None:
        super().__init__(file)
        self.storages = storages
        self.path = path

    def persistent_load(self, pid: object) -> Any:
        return self.storages.load(pid)

    def find_class(self, module: str, name: str) -> Any:
        allowed: Mapping[tuple[str, str], Callable[..., Any]] = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return _plain_list
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        # torch.classes are C++ classes, whose state only their code can read.
        if (
            (module == "__torch__" or module.startswith("__torch__."))
            and not module.startswith("__torch__.torch.classes")
            and name.isidentifier()
        ):
            return _module_type(f"{module}.{name}")
        wanted = f"{module}.{name}"
        # A mutated name may hold control characters: shown escaped, on one line.
        raise pickle.UnpicklingError(
            f"it would import {wanted if wanted.isprintable() else ascii(wanted)[:120]}"
        )

    def load_build(self) -> None:
        stack = self.stack  # type: ignore[attr-defined]
        state = stack.pop()
        instance = stack[-1]
        if not isinstance(instance, _Module):
            raise pickle.UnpicklingError(f"it would set the state of a {type(instance).__name__}")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise BadFile(
                f"{self.path}: module {instance.qualified_name} saves its own state "
                "(__getstate__), which only its code can read"
            )
        instance.attributes.update(state)

    dispatch[pickle.BUILD[0]] = load_build


def _flatten(
    module: _Module,
    prefix: str,
    classes: Mapping[str, _Members],
    tensors: dict[str, torch.Tensor],
    path: Path,
    ancestors: tuple[int, ...],
) -> None:
    """``module``'s parameters, buffers, then each submodule's, under ``prefix`` as state_dict names them.

    ``ancestors`` are the modules above this one (by id): a pickle's memo can
    make a module its own submodule, which no saved module is.
    """
    import torch

    if id(module) in ancestors or len(ancestors) > _DEEPEST:
        raise BadFile(f"{path}: module {prefix.rstrip('.')} contains itself, or nests too deep")

    members = classes.get(module.qualified_name)
    if members is None:
        raise BadFile(
            f"{path} has no code declaring class {module.qualified_name}, so its parameters "
            "cannot be told from its other attributes"
        )
    for name in (*members.parameters, *members.buffers):
        value = module.attributes.get(name)
        if value is None:  # an absent bias: state_dict() leaves it out too
            continue
        if not isinstance(value, torch.Tensor):
            raise BadFile(f"{path}: {prefix}{name} is a {type(value).__name__}, not a tensor")
        tensors[prefix + name] = value
    for name, value in module.attributes.items():
        if isinstance(value, _Module):
            _flatten(value, f"{prefix}{name}.", classes, tensors, path, (*ancestors, id(module)))

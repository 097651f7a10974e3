"""Reading weights files safely, selecting a layer's tensors, and checking them.

The readers live at the top level because every stage needs them: ``config``
reads a file once per command and infers sizes from it, ``eager`` loads the
tensors into the module, and the pipeline records their content hash. A file is
read once, into a ``WeightsFile``; everything after that (``select_checkpoint``,
``layer_checkpoint``) works on that object in memory, passed down explicitly.

Four formats, told apart by content where a suffix could lie: ``.safetensors``
(no code can run from it by design); PyTorch state-dict files
(``.pt``/``.pth``/``.bin``), read with ``weights_only=True`` passed explicitly:
the environment variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns a bare
``torch.load`` back into a full unpickler that runs the file's code, but an
explicit argument wins over it; numpy ``.npz`` archives, read without
unpickling (``runtime.npy``), whose tensors keep the archive's names; and
TorchScript archives (``torch.jit.save``), whose parameters and buffers are read
without compiling or running the archive's code (``readers.torchscript``).

Floating-point weights convert to the layer's dtype only when asked: a layer
takes its weights' own dtype unless a dtype is asked for, and the
conversion is noted (``config.resolve_config``). Integer and other tensors are
refused, as are values a narrower dtype cannot hold (they would become Inf).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from layerport.errors import BadFile, MissingDependency, ResourceLimit, Setting, UserInputError
from layerport.runtime.limits import check_allocation
from layerport.spec import LayerSpec, Params, WeightPart, possible_shape

if TYPE_CHECKING:
    import torch

# One submodule's prefix, or the prefix of each of a layer's weight parts.
WeightsPrefix = str | Mapping[str, str]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
NPZ_SUFFIXES = (".npz",)


@dataclass(frozen=True)
class WeightsFile:
    """A weights file, read once: its path and its top-level entries as loaded.

    ``entries`` is a state dict (name -> tensor) or a training script's wrapper
    dict around one (``{"model_state_dict": {...}, "epoch": 3}``). Selecting a
    layer's tensors from it (``select_checkpoint``, ``layer_checkpoint``) reads
    nothing more.
    """

    path: Path
    entries: Mapping[Any, Any]


@dataclass(frozen=True)
class Checkpoint:
    """The tensors a weights file holds for one layer, and how they were found in it.

    ``key`` is the entry of a training script's wrapper dict that held them
    (``model_state_dict``), ``prefix`` the submodule prefix selected and
    stripped (``encoder.lstm.``); ``notes`` say both, and any wrapper's segment
    stripped (``module.``, ``_orig_mod.``, ``_fsdp_wrapped_module.``), in words
    for the user. ``file_names`` are every tensor's name in the file as a
    prefix is typed (``ema.encoder.lstm.weight_ih_l0``, wrappers stripped), for
    advice; ``fitting`` the prefixes under which the file holds tensors that
    fit the layer, filled in where the selection does not.
    """

    tensors: dict[str, torch.Tensor]
    key: str | None = None
    prefix: WeightsPrefix | None = None
    notes: tuple[str, ...] = ()
    file_names: tuple[str, ...] = ()
    fitting: tuple[str, ...] = ()


def read_weights_file(path: Path) -> WeightsFile:
    """Read ``path`` once, without running code from it.

    Raises ``BadFile`` for a file that is missing, too large for the memory
    limit, of an unknown format (see ``weights_format``), or not valid in it.
    """
    kind = weights_format(path)
    # What each format's reader imports; a runtime-only install has neither.
    _require({"safetensors": "safetensors", "torch": "torch", "torchscript": "torch"}.get(kind))
    if kind == "safetensors":
        return WeightsFile(path, _read_safetensors(path))
    if kind == "npz":
        return WeightsFile(path, _npz_tensors(path))
    if kind == "torchscript":
        from layerport.readers.torchscript import read_torchscript

        _check_unpacked_size(path)
        return WeightsFile(path, read_torchscript(path))
    return WeightsFile(path, _read_state_dict(path))


def _require(package: str | None) -> None:
    """Raise ``MissingDependency`` naming the install where ``package`` is not installed."""
    import importlib.util

    if package is not None and importlib.util.find_spec(package) is None:
        raise MissingDependency(
            f"reading this weights file needs {package}, which this installation lacks; "
            "install the export extra: pip install -c constraints.txt 'layerport[export]'"
        )


def weights_format(path: Path) -> str:
    """``safetensors``, ``torch``, ``torchscript`` or ``npz``: by content, else by suffix.

    Every zip format ends in ``.pt`` somewhere (TorchScript archives too), so a
    zip is told by its members: ``.npy`` arrays (numpy), ``data.pkl`` beside
    ``code/`` (``torch.jit.save``) or ``data.pkl`` alone (``torch.save``).
    Raises ``BadFile`` for a file that is missing, too large for the memory
    limit, or neither such a zip nor of a known suffix.
    """
    from layerport.readers.torchscript import is_torchscript_archive

    if not path.is_file():
        raise BadFile(
            f"weights file {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    check_allocation(path.stat().st_size, f"reading weights file {path}")
    with path.open("rb") as handle:
        head = handle.read(2)
    names: list[str] = []
    if head == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            NotImplementedError,  # a zip version or compression zipfile lacks
            OSError,
            EOFError,
            ValueError,
        ):
            names = []  # a damaged zip: its suffix decides whose reader says why
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if is_torchscript_archive(names):
        return "torchscript"
    if any(name.endswith("/data.pkl") for name in names):
        return "torch"
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in NPZ_SUFFIXES:
        return "npz"
    raise BadFile(
        f"weights file {path} must end in .safetensors, .pt, .pth, .bin or .npz (or be "
        f"an archive of torch.save, torch.jit.save or numpy.savez), got {suffix or 'no suffix'!r}"
    )


def _npz_arrays(path: Path) -> dict[str, Any]:
    """An ``.npz`` archive's arrays by key, in the archive's order, without unpickling.

    Raises ``BadFile`` naming the key of an array of Python objects.
    """
    from layerport.runtime.npy import read_arrays

    return read_arrays([(None, path)])


def _npz_tensors(path: Path) -> dict[str, torch.Tensor]:
    """An ``.npz`` archive's arrays as tensors, by the archive's keys."""
    import torch

    tensors = {}
    for key, array in _npz_arrays(path).items():
        if array.dtype.kind not in "biufc":
            raise BadFile(f"{path} (array {key}) holds {array.dtype}, not numbers")
        # Native byte order and C order, keeping a 0-d array 0-d (ascontiguousarray would not).
        native = array.astype(array.dtype.newbyteorder("="), order="C", copy=False)
        tensors[key] = torch.from_numpy(native)
    return tensors


def read_tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in the weights file at ``path``, by name, in the file's order.

    Named as a prefix selects them (see ``_file_shapes``). Torch-free for
    ``.safetensors`` and ``.npz``; a safetensors file keeps no order, so its
    names come in natural order (``layers.2.`` before ``layers.10.``). Raises
    ``BadFile`` as ``read_weights_file`` does, and for a file that holds no tensors.
    """
    kind = weights_format(path)
    if kind == "npz":
        named = {key: tuple(array.shape) for key, array in _npz_arrays(path).items()}
    elif kind == "safetensors":
        _require("safetensors")
        named = _safetensors_shapes(path)
    else:
        return _file_shapes(read_weights_file(path))
    shapes, _ = strip_wrappers(named, [])
    return shapes


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            names = sorted(handle.keys(), key=_natural_order)
            return {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BadFile(f"{path} is not a valid safetensors file: {_first_line(error)}") from error


def _natural_order(name: str) -> list[tuple[int, int | str]]:
    """``layers.2.weight`` before ``layers.10.weight``: numbers compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


# Whether the tensors under one prefix (named as the layer names them, with
# their shapes) fit a layer; ``config`` builds it from the layer's spec.
Fits = Callable[[Mapping[str, tuple[int, ...]]], bool]


def select_checkpoint(
    source: WeightsFile, prefix: str | None = None, fits: Fits | None = None
) -> Checkpoint:
    """The tensors of one layer in ``source``, as training scripts save them.

    Accepted: a bare state dict; a wrapper dict with one entry of named tensors
    (``{"model_state_dict": ..., "epoch": 3, "optimizer": ...}``: the rest is
    ignored); the segments that torch's wrappers add to names (stripped, see
    ``strip_wrappers``). ``prefix`` selects one submodule: only the keys that
    start with it, stripped of it; it may be typed with or without the
    wrappers' segments, as the file holds it or as layerport strips it. When a
    wrapper holds several dicts of tensors, ``prefix`` may start with the
    entry's name (``ema.lstm.``).

    Raises ``BadFile`` for a file that holds no such tensors, or none under
    ``prefix``: the message names every prefix whose tensors ``fits`` accepts.
    """
    if prefix and not prefix.endswith("."):
        prefix += "."  # a submodule's keys always continue with a dot: "lstm" means "lstm."
    notes: list[str] = []
    entry, key, prefix = _unwrap(source, prefix, notes, fits)
    tensors, stripped = strip_wrappers(entry, notes)
    if prefix:
        tensors, prefix = _select(tensors, _stripped_prefixes(prefix, stripped), source, fits)
        notes.append(_selected(prefix))
    return Checkpoint(tensors, key, prefix, tuple(notes), tuple(_file_shapes(source)))


_STRIPPED = ", with the prefix stripped"


def _selected(prefix: object) -> str:
    return f"using the tensors under {prefix!r}{_STRIPPED}"


def is_prefix_note(note: str) -> bool:
    """Whether ``note`` only says which prefix selected a layer's tensors."""
    return note.startswith("using the tensors under ") and note.endswith(_STRIPPED)


def layer_checkpoint(
    source: WeightsFile,
    prefix: WeightsPrefix | None,
    parts: Sequence[WeightPart] = (),
    fits: Fits | None = None,
) -> Checkpoint:
    """The tensors of one layer, named as the layer names them.

    ``prefix`` is one submodule's prefix (see ``select_checkpoint``), or a mapping
    from the names of the layer's ``weight_parts`` to the prefix that holds each
    (``{"recurrence": "rnn.", "head": "fc."}``): each part's torch key names are
    then renamed to the layer's. A key a part does not map keeps its full name,
    so the weights check reports it as unexpected.

    Raises ``UserInputError`` for a part the layer does not have, and ``BadFile``
    as ``select_checkpoint`` does.
    """
    if not isinstance(prefix, Mapping):
        return select_checkpoint(source, prefix, fits)
    known = {part.name: part for part in parts}
    left_out = [name for name in known if name not in prefix]
    if left_out and all(name in known for name in prefix):
        raise UserInputError(
            f"weight part {left_out[0]} has no prefix; give one for every part with ",
            Setting("weights_prefix", f"{left_out[0]}=PREFIX"),
            f" (this layer's parts: {', '.join(known)})",
        )
    tensors: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    key = None
    file_names: tuple[str, ...] = ()
    for name, part_prefix in prefix.items():
        if name not in known:
            raise UserInputError(
                f"{_unknown_part(name, parts)}; give the weights' prefix alone with ",
                Setting("weights_prefix", "PREFIX"),
            )
        checkpoint = select_checkpoint(source, part_prefix)
        file_names = checkpoint.file_names
        key = checkpoint.key
        notes += [
            note
            for note in checkpoint.notes
            if note not in notes and note != _selected(checkpoint.prefix)
        ]
        renames = known[name].keys
        for torch_name, tensor in checkpoint.tensors.items():
            tensors[renames.get(torch_name, f"{checkpoint.prefix}{torch_name}")] = tensor
        notes.append(
            f"reading {name} ({known[name].description}) from the tensors under "
            f"{checkpoint.prefix!r}"
        )
    return Checkpoint(tensors, key, dict(prefix), tuple(notes), file_names)


def keyed_checkpoint(source: WeightsFile, keys: Mapping[str, str]) -> Checkpoint:
    """The tensors of one layer picked one by one: each weight name -> the file's key for it.

    For files whose names are not torch's (an ``.npz`` of ``fc_w`` and ``fc_b``:
    ``{"weight": "fc_w", "bias": "fc_b"}``). Keys are the file's names as a
    prefix selects them (a training checkpoint unwrapped, wrappers' segments
    stripped). Raises ``BadFile`` naming a key the file does not hold, with the
    closest it does.
    """
    import difflib

    notes: list[str] = []
    entry, key, _ = _unwrap(source, None, notes, None)
    tensors, _ = strip_wrappers(entry, notes)
    for name, wanted in keys.items():
        if wanted not in tensors:
            close = difflib.get_close_matches(wanted, list(tensors), n=3)
            raise BadFile(
                f"{source.path} holds no tensor {wanted!r} (for {name})"
                + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                + f" Its tensors: {_listed(list(tensors))}"
            )
    notes.append("reading " + ", ".join(f"{name} from {wanted!r}" for name, wanted in keys.items()))
    selected = {name: tensors[wanted] for name, wanted in keys.items()}
    return Checkpoint(selected, key, dict(keys), tuple(notes), tuple(_file_shapes(source)))


def _unknown_part(name: str, parts: Sequence[WeightPart]) -> str:
    if not parts:
        return f"this layer has no weight parts, so {name}= names none"
    return f"unknown weight part {name!r}; this layer's parts: {', '.join(p.name for p in parts)}"


def _is_tensor_dict(value: object) -> bool:
    import torch

    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _unwrap(
    source: WeightsFile, prefix: str | None, notes: list[str], fits: Fits | None
) -> tuple[dict[str, torch.Tensor], str | None, str | None]:
    """The state dict in ``source``, the wrapper key it sat under, and the prefix left."""
    loaded, path = source.entries, source.path
    if _is_tensor_dict(loaded):
        return dict(loaded), None, prefix
    candidates = [key for key, value in loaded.items() if _is_tensor_dict(value)]
    if prefix and prefix.split(".", 1)[0] in candidates:
        key, _, prefix = prefix.partition(".")
        candidates = [key]
    if len(candidates) == 1:
        key = candidates[0]
        ignored = [repr(other) for other in loaded if other != key]
        notes.append(
            f"{path.name} is a training checkpoint: using its {key!r} entry"
            + (f" (ignoring {', '.join(ignored[:6])})" if ignored else "")
        )
        return dict(loaded[key]), key, prefix or None
    if len(candidates) > 1:
        fitting = fitting_prefixes(source, fits) if fits is not None else []
        raise BadFile(
            f"{path} holds several dicts of tensors ({', '.join(map(repr, candidates))}); "
            "choose one by starting ",
            Setting("weights_prefix", f"{candidates[0]}."),
            " with its name",
            *(["; ", *_fitting_advice(fitting)] if fitting else []),
        )
    not_named_tensors = [repr(key) for key in loaded if not isinstance(key, str)] or [
        repr(key) for key, value in loaded.items() if not _is_tensor(value)
    ]
    raise BadFile(
        f"{path} holds entries that are not named tensors: {', '.join(not_named_tensors[:5])}"
    )


def _is_tensor(value: object) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


# DataParallel saves its module under "module.": stripped only where every name
# starts with it, since a model may well have a submodule of that name. The other
# wrappers' segments are distinctive, and they wrap submodules as often as whole
# models (FSDP's auto-wrap policy wraps each block: "_fsdp_wrapped_module.encoder.
# _fsdp_wrapped_module.lstm.weight_ih_l0"), so they are stripped wherever they
# stand in a name, as torch's own load_state_dict hooks for them do.
_LEADING_WRAPPER = "module."
_WRAPPER_SEGMENTS = {
    "_orig_mod": "torch.compile",
    "_fsdp_wrapped_module": "FSDP",
    "_checkpoint_wrapped_module": "activation checkpointing",
}


_Value = TypeVar("_Value")  # a tensor, or only its shape


@dataclass(frozen=True)
class _Stripped:
    """What ``strip_wrappers`` took out of a file's names, to take it out of a prefix too."""

    leading: int = 0
    segments: frozenset[str] = frozenset()


def strip_wrappers(
    tensors: Mapping[str, _Value], notes: list[str]
) -> tuple[dict[str, _Value], _Stripped]:
    """``tensors`` named as the unwrapped module names them, and what was stripped.

    A note in ``notes`` names each wrapper's segment stripped.
    """
    found = sorted(
        {part for name in tensors for part in name.split(".")[:-1] if part in _WRAPPER_SEGMENTS}
    )
    named = dict(tensors)
    if found:
        named = {_without_segments(name, found): tensor for name, tensor in named.items()}
        notes += [
            f"stripped the {part + '.'!r} that {_WRAPPER_SEGMENTS[part]} adds to names"
            for part in found
        ]
    leading = 0
    while named and all(name.startswith(_LEADING_WRAPPER) for name in named):
        named = {name.removeprefix(_LEADING_WRAPPER): tensor for name, tensor in named.items()}
        leading += 1
    if leading:
        notes.append(f"stripped the {_LEADING_WRAPPER!r} prefix that torch wrappers add")
    return named, _Stripped(leading, frozenset(found))


def _without_segments(name: str, segments: Iterable[str]) -> str:
    *path, own = name.split(".")
    return ".".join([part for part in path if part not in segments] + [own])


def _stripped_prefixes(prefix: str, stripped: _Stripped) -> list[str]:
    """``prefix`` as the stripped names hold it: as typed first, then shorn of ``module.``.

    A prefix typed as the file holds it (``module.encoder.``,
    ``_fsdp_wrapped_module.encoder.``) selects what its stripped form does.
    """
    prefix = _without_segments(prefix, stripped.segments)
    forms = [prefix]
    for _ in range(stripped.leading):
        if not prefix.startswith(_LEADING_WRAPPER):
            break
        prefix = prefix.removeprefix(_LEADING_WRAPPER)
        forms.append(prefix)
    return forms


def _select(
    tensors: dict[str, torch.Tensor], prefixes: list[str], source: WeightsFile, fits: Fits | None
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors under the first of ``prefixes`` that holds any, stripped of it, and that prefix."""
    for prefix in prefixes:
        selected = {
            name.removeprefix(prefix): tensor
            for name, tensor in tensors.items()
            if name.startswith(prefix)
        }
        if selected:
            return selected, prefix
    fitting = fitting_prefixes(source, fits) if fits is not None else []
    raise BadFile(
        f"no tensor in {source.path} starts with {prefixes[0]!r}; its prefixes: "
        f"{_listed(submodule_prefixes(_file_shapes(source)), most=8) or '(none)'}",
        *(["; ", *_fitting_advice(fitting)] if fitting else []),
    )


def submodule_prefixes(names: Iterable[str]) -> list[str]:
    """Every dotted prefix that ends before a tensor's own name (``encoder.``, ``encoder.lstm.``)."""
    prefixes: set[str] = set()
    for name in names:
        parts = name.split(".")[:-1]
        prefixes |= {".".join(parts[: end + 1]) + "." for end in range(len(parts))}
    return sorted(prefixes)


def _file_shapes(source: WeightsFile) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in ``source``, by its name as a prefix selects it.

    That is the name with wrappers' segments stripped, after the entry's name
    where a wrapper dict holds several dicts of tensors (``ema.lstm.weight_ih_l0``).
    """
    entries = source.entries
    if _is_tensor_dict(entries):
        groups = {"": entries}
    else:
        candidates = {key: value for key, value in entries.items() if _is_tensor_dict(value)}
        groups = (
            {"": next(iter(candidates.values()))}
            if len(candidates) == 1
            else {f"{key}.": value for key, value in candidates.items()}
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for head, tensors in groups.items():
        named, _ = strip_wrappers(tensors, [])
        shapes |= {head + name: tuple(tensor.shape) for name, tensor in named.items()}
    return shapes


def fitting_prefixes(source: WeightsFile, fits: Fits) -> list[str]:
    """Every prefix under which ``source`` holds tensors that ``fits`` accepts, in the file's order.

    Each is named as it is typed back (see ``_file_shapes``), so selecting it
    gives exactly those tensors.
    """
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in _file_shapes(source).items():
        parts = name.split(".")
        for end in range(1, len(parts)):
            prefix = ".".join(parts[:end]) + "."
            groups.setdefault(prefix, {})[".".join(parts[end:])] = shape
    return [prefix for prefix, shapes in groups.items() if fits(shapes)]


def _fitting_advice(fitting: Sequence[str]) -> list[str | Setting]:
    """Every prefix that fits, in full, and how to select one."""
    return [
        f"the file holds them under {_listed([repr(prefix) for prefix in fitting])}: "
        f"select {'them' if len(fitting) == 1 else 'one'} with ",
        Setting("weights_prefix", fitting[0]),
    ]


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BadFile(f"{path} is not a valid safetensors file: {_first_line(error)}") from error
    except Exception as error:  # any other failure on these bytes is the file's, too
        raise BadFile(
            f"{path} is not a valid safetensors file: {type(error).__name__}: {_first_line(error)}"
        ) from error


def _read_state_dict(path: Path) -> Mapping[Any, Any]:
    import torch

    with path.open("rb") as handle:
        head = handle.read(2)
    # torch.save writes a zip archive; before PyTorch 1.6, a pickle (protocol 2+).
    if not head:
        raise BadFile(f"weights file {path} is empty")
    if head != b"PK" and head[:1] != b"\x80":
        raise BadFile(f"{path} is not a PyTorch weights file (neither a zip archive nor a pickle)")
    if head == b"PK":
        _check_unpacked_size(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise BadFile(
            f"{path} was refused ({_unsafe_globals(path, error)}): layerport loads only "
            "plain state dicts of tensors (weights_only=True) and never runs code from a "
            "weights file; re-save the weights alone, with torch.save(model.state_dict(), PATH)"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
        raise BadFile(
            f"{path} is not a valid PyTorch weights file: {_first_line(error)}"
        ) from error
    except MemoryError as error:
        raise ResourceLimit(
            f"reading weights file {path} ran out of memory: the sizes it records are larger "
            "than this machine can hold"
        ) from error
    except Exception as error:
        # torch's unpickler fails on malformed bytes with whatever Python raises
        # where it stands: IndexError (a bad memo index), TypeError, struct.error
        # (a truncated record). Each is the file's fault, not layerport's.
        raise BadFile(
            f"{path} is not a valid PyTorch weights file: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    if not isinstance(loaded, Mapping):
        raise BadFile(f"{path} holds a {type(loaded).__name__}, not a state dict of name -> tensor")
    return loaded


def _check_unpacked_size(path: Path) -> None:
    """Refuse a zip checkpoint whose members unpack to more than the memory limit.

    A deflated member of a few megabytes can inflate to gigabytes; the sizes in
    the zip's directory say so before anything is inflated (torch's reader
    allocates each record at its recorded size, and never past it). A zip
    Python cannot read is left to torch, which says why in its own words.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        OSError,
        EOFError,
        ValueError,
    ):
        return
    check_allocation(unpacked, f"reading weights file {path} (unpacked from its zip)")


def _unsafe_globals(path: Path, error: Exception) -> str:
    """What the pickle would import, named without running any of it.

    ``get_unsafe_globals_in_checkpoint`` lists every global of a zip checkpoint
    (an ``argparse.Namespace`` of training options, numpy scalars); a legacy
    pickle names only the first, in the error.
    """
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    if not names:
        wanted = re.search(r"GLOBAL (\S+)", str(error))
        names = [wanted.group(1)] if wanted else []
    return f"it would import {', '.join(names)}" if names else "objects other than tensors"


def size_witness(
    infer: Callable[[Mapping[str, tuple[int, ...]]], Mapping[str, object]],
    shapes: Mapping[str, tuple[int, ...]],
    name: str,
) -> str | None:
    """Which tensor tells parameter ``name``, in words: ``weight_hh_l0 has shape (20, 5)``.

    ``infer`` is a spec's ``params_from_weights``. The first tensor (in the
    file's order) whose size, or whose presence, changes what ``infer`` reads
    for ``name`` is the witness; ``None`` when no single tensor is (a flag the
    weights imply by an absence). The probes are shapes only: nothing is built.
    """

    def told(probe: Mapping[str, tuple[int, ...]]) -> object:
        try:
            return infer(probe).get(name)
        except Exception:  # a probe the plugin cannot read says nothing about the witness
            return None

    value = told(shapes)
    for tensor, shape in shapes.items():
        for axis in range(len(shape)):
            # Doubled and one more, so a size read as rows // gates changes too.
            grown = (*shape[:axis], 2 * shape[axis] + 1, *shape[axis + 1 :])
            if told({**shapes, tensor: grown}) not in (value, None):
                return f"{tensor} has shape {tuple(shape)}"
    for tensor in shapes:
        if told({key: shape for key, shape in shapes.items() if key != tensor}) not in (
            value,
            None,
        ):
            return f"the weights hold {tensor}"
    return None


def check_weight_ranks(
    shapes: Mapping[str, tuple[int, ...]], spec: LayerSpec, params: Params, path: Path
) -> None:
    """Refuse a tensor whose rank is not its weight's, before any plugin code reads the shapes.

    ``params_from_weights`` unpacks shapes (``out_features, in_features =
    shapes["weight"]``); a 1-d weight would make that the plugin's failure, when
    it is the file's. Sizes are checked later (``check_weights``), once the
    parameters they imply are known. Raises ``BadFile`` naming the tensor, its
    shape and a shape of the rank the layer expects.
    """
    possible = spec.possible_weights(params)
    for name, shape in shapes.items():
        expected = possible_shape(possible, name)
        if expected is not None and len(shape) != len(expected):
            raise BadFile(
                f"weights in {path} do not fit layer {spec.name}: {name} has shape "
                f"{tuple(shape)} ({len(shape)}-d), expected a {len(expected)}-d shape "
                f"such as {expected}"
            )


def check_weights(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    dtype: str,
    path: Path,
    parts: Sequence[WeightPart] = (),
    checkpoint: Checkpoint | None = None,
    integer: Collection[str] = (),
) -> None:
    """Compare a file's tensors with the layer's declared names and shapes.

    The tensors must be floating point, finite, and within ``dtype``'s range, the
    dtype they are converted to, except those named in ``integer``: the integer
    buffers the layer's module holds (``BatchNorm``'s ``num_batches_tracked``),
    which must be integers and are loaded as they are. ``parts`` are the layer's
    weight parts and ``checkpoint`` the selection ``tensors`` came from, for
    advice on a whole-model checkpoint that holds them. Raises ``BadFile`` naming
    every problem.
    """
    import torch

    problems: list[str] = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing and unexpected:  # other names: the expected sizes are only defaults
        problems.append(f"missing {_listed(missing)}")
    elif missing:
        problems.append(
            f"missing {_listed([f'{name} of shape {tuple(expected[name])}' for name in missing])}"
        )
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    for name in sorted(set(expected) & set(tensors)):
        tensor = tensors[name]
        storage = _storage_problem(name, tensor)
        if storage is not None:
            problems.append(storage)
        elif tuple(tensor.shape) != tuple(expected[name]):
            problems.append(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name])}"
            )
        elif name in integer:
            if tensor.is_floating_point() or tensor.is_complex():
                problems.append(f"{name} is {_dtype_name(tensor)}, not an integer")
        elif not tensor.is_floating_point():
            problems.append(f"{name} is {_dtype_name(tensor)}, not floating point")
        elif not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name} holds NaN or Inf")
        elif _out_of_range(tensor, dtype):
            problems.append(
                f"{name} holds {float(tensor.abs().max()):.6g}, beyond {dtype}'s largest value "
                f"{_largest(dtype):.6g}: converting it would make it Inf"
            )
    advice = (
        _prefix_advice(checkpoint, expected, parts) if missing and unexpected and checkpoint else []
    )
    if problems:
        raise BadFile(
            f"weights in {path} do not fit the layer: {'; '.join(problems)}",
            *(["; ", *advice] if advice else []),
        )


def weights_dtype_of(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The weights' own dtype, such as ``float32``; ``float16 and float32`` when they mix.

    Only plain floating-point tensors count; ``None`` when there are none.
    ``check_weights`` refuses the others, saying why.
    """
    found = sorted(
        {
            _dtype_name(tensor)
            for name, tensor in tensors.items()
            if _storage_problem(name, tensor) is None and tensor.is_floating_point()
        }
    )
    return " and ".join(found) or None


def conversion_underflow(tensors: Mapping[str, torch.Tensor], dtype: str) -> tuple[str, ...]:
    """Per tensor, in words: the non-zero values that converting to ``dtype`` makes zero or subnormal.

    float16's smallest normal value is 6.1e-5, so a trained checkpoint's tiny
    weights flush to zero, or keep a few significant bits, silently; a failed
    verification then has its likely cause named. Tensors that lose nothing
    are left out; ``dtype`` is a precision's name.
    """
    import torch

    target = getattr(torch, dtype)
    smallest_normal = float(torch.finfo(target).tiny)
    found = []
    for name in sorted(tensors):
        tensor = tensors[name]
        if not tensor.is_floating_point() or tensor.dtype == target or tensor.numel() == 0:
            continue
        source = tensor.detach().to(torch.float64)
        converted = tensor.detach().to(target).to(torch.float64).abs()
        nonzero = source != 0
        zero = nonzero & (converted == 0)
        subnormal = nonzero & (converted > 0) & (converted < smallest_normal)
        zeros, subnormals = int(zero.sum()), int(subnormal.sum())
        if zeros == 0 and subnormals == 0:
            continue
        lost = source[zero if zeros else subnormal].abs().min()
        found.append(
            f"{name}: {zeros} of {int(nonzero.sum())} non-zero values become 0 and "
            f"{subnormals} subnormal (smallest magnitude lost {float(lost):.3g})"
        )
    return tuple(found)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _largest(dtype: str) -> float:
    import torch

    return float(torch.finfo(getattr(torch, dtype)).max)


def _out_of_range(tensor: torch.Tensor, dtype: str) -> bool:
    return tensor.numel() > 0 and float(tensor.abs().max()) > _largest(dtype)


def _listed(names: list[str], most: int = 6) -> str:
    """Names, at most ``most`` of them: a whole model's checkpoint has hundreds."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _prefix_advice(
    checkpoint: Checkpoint, expected: Mapping[str, tuple[int, ...]], parts: Sequence[WeightPart]
) -> list[str | Setting]:
    """Advice for a whole-model checkpoint: every prefix that holds the layer's tensors.

    Computed from the file's full names, not from the selection that failed.
    """
    if checkpoint.fitting:
        return _fitting_advice(checkpoint.fitting)
    names = checkpoint.file_names
    part_holders = {
        part.name: _holders(names, [key for key, name in part.keys.items() if name in expected])
        for part in parts
    }
    if parts and all(part_holders.values()):
        chosen = [f"{name}={holders[0]}" for name, holders in part_holders.items()]
        described = ", ".join(
            f"{part.description} under {' or '.join(map(repr, part_holders[part.name]))}"
            for part in parts
        )
        return [
            f"the file holds them as {described}: select them with ",
            Setting("weights_prefix", chosen[0], tuple(chosen[1:])),
        ]
    prefixes = [p for p in submodule_prefixes(names) if p.count(".") == 1]
    if prefixes:
        return [
            f"its tensors are under {', '.join(prefixes[:6])}: select one with ",
            Setting("weights_prefix", "PREFIX"),
        ]
    return []


def _holders(names: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The prefixes under which ``names`` holds every one of the ``wanted`` names."""
    wanted = list(wanted)
    names = set(names)
    candidates = {name[: -len(w)] for w in wanted for name in names if name.endswith("." + w)}
    return sorted(p for p in candidates if all(p + w in names for w in wanted))


def _storage_problem(name: str, tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` is not a plain, dense CPU tensor holding its data, or ``None``.

    ``torch.load`` hands back meta tensors (saved from a module built on
    ``device="meta"``), sparse, quantized and nested tensors and tensor
    subclasses as they were saved; ``load_state_dict`` would fail on them deep
    inside torch, or copy nothing at all.
    """
    import torch

    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return f"{name} is a {type(tensor).__name__}, not a plain tensor"
    if tensor.is_meta:
        return (
            f"{name} holds no data: it is a meta tensor (saved from a module built on "
            "device='meta'); save the weights after they are materialized"
        )
    if tensor.layout != torch.strided:
        layout = str(tensor.layout).removeprefix("torch.")
        return f"{name} is a {layout} tensor; save it dense (tensor.to_dense())"
    if tensor.is_quantized:
        return f"{name} is a quantized tensor; save it dequantized (tensor.dequantize())"
    if tensor.is_nested:
        return f"{name} is a nested tensor, which a layer's weights cannot be"
    if tensor.device.type != "cpu":
        return f"{name} is on {tensor.device}, not the CPU"
    return None


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of weights by content: each tensor's name, dtype, shape and bytes.

    Tensors are taken in name order, so the same tensors give the same digest in
    any container (``.safetensors`` or ``.pt``) and in any key order; a file's
    own bytes would differ.
    """
    import json

    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous()
        header = [name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]
        digest.update(json.dumps(header).encode() + b"\n")
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    """The first sentence of a dependency's error, which is often a page long."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(error).__name__

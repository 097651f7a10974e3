"""Reading weights files safely, selecting a layer's tensors, and checking them.

The readers live at the top level because every stage needs them: ``config``
reads a file once per command and infers sizes from it, ``eager`` loads the
tensors into the module, and the pipeline records their content hash. A file is
read once, into a ``WeightsFile``; everything after that (``select_checkpoint``,
``layer_checkpoint``) works on that object in memory, passed down explicitly.

Two formats: ``.safetensors`` (no code can run from it by design) and PyTorch
state-dict files (``.pt``/``.pth``/``.bin``), read with ``weights_only=True`` passed
explicitly: the environment variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns
a bare ``torch.load`` back into a full unpickler that runs the file's code, but
an explicit argument wins over it.

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
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerport.errors import BadFile, Setting, UserInputError
from layerport.runtime.limits import check_allocation
from layerport.spec import WeightPart

if TYPE_CHECKING:
    import torch

# One submodule's prefix, or the prefix of each of a layer's weight parts.
WeightsPrefix = str | Mapping[str, str]

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


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
    stripped (``encoder.lstm.``); ``notes`` say both, and any ``module.`` or
    ``_orig_mod.`` prefix stripped, in words for the user.
    """

    tensors: dict[str, torch.Tensor]
    key: str | None = None
    prefix: WeightsPrefix | None = None
    notes: tuple[str, ...] = ()


def read_weights_file(path: Path) -> WeightsFile:
    """Read ``path`` once, without running code from it.

    Raises ``BadFile`` for a file that is missing, too large for the memory
    limit, of an unknown suffix, or not valid in its format.
    """
    if not path.is_file():
        raise BadFile(
            f"weights file {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    check_allocation(path.stat().st_size, f"reading weights file {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return WeightsFile(path, _read_safetensors(path))
    if suffix in TORCH_SUFFIXES:
        return WeightsFile(path, _read_state_dict(path))
    raise BadFile(
        f"weights file {path} must end in .safetensors, .pt, .pth or .bin, "
        f"got {suffix or 'no suffix'!r}"
    )


def select_checkpoint(source: WeightsFile, prefix: str | None = None) -> Checkpoint:
    """The tensors of one layer in ``source``, as training scripts save them.

    Accepted: a bare state dict; a wrapper dict with one entry of named tensors
    (``{"model_state_dict": ..., "epoch": 3, "optimizer": ...}``: the rest is
    ignored); the ``module.`` prefix of ``DataParallel`` and the ``_orig_mod.``
    of ``torch.compile`` (stripped). ``prefix`` selects one submodule: only the
    keys that start with it, stripped of it. When a wrapper holds several dicts
    of tensors, ``prefix`` may start with the entry's name (``ema.lstm.``).

    Raises ``BadFile`` for a file that holds no such tensors.
    """
    if prefix and not prefix.endswith("."):
        prefix += "."  # a submodule's keys always continue with a dot: "lstm" means "lstm."
    notes: list[str] = []
    tensors, key, prefix = _unwrap(source.entries, source.path, prefix, notes)
    tensors = _strip_wrapping_prefixes(tensors, notes)
    if prefix:
        tensors = _select(tensors, prefix, source.path)
        notes.append(_selected(prefix))
    return Checkpoint(tensors, key, prefix, tuple(notes))


def _selected(prefix: object) -> str:
    return f"using the tensors under {prefix!r}, with the prefix stripped"


def layer_checkpoint(
    source: WeightsFile, prefix: WeightsPrefix | None, parts: Sequence[WeightPart] = ()
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
        return select_checkpoint(source, prefix)
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
    for name, part_prefix in prefix.items():
        if name not in known:
            raise UserInputError(
                f"{_unknown_part(name, parts)}; give the weights' prefix alone with ",
                Setting("weights_prefix", "PREFIX"),
            )
        checkpoint = select_checkpoint(source, part_prefix)
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
    return Checkpoint(tensors, key, dict(prefix), tuple(notes))


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
    loaded: Mapping[Any, Any], path: Path, prefix: str | None, notes: list[str]
) -> tuple[dict[str, torch.Tensor], str | None, str | None]:
    """The state dict in ``loaded``, the wrapper key it sat under, and the prefix left."""
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
        raise BadFile(
            f"{path} holds several dicts of tensors ({', '.join(map(repr, candidates))}); "
            "choose one by starting ",
            Setting("weights_prefix", f"{candidates[0]}."),
            " with its name",
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


# DataParallel saves its module under "module."; torch.compile under "_orig_mod.".
_WRAPPING_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrapping_prefixes(
    tensors: dict[str, torch.Tensor], notes: list[str]
) -> dict[str, torch.Tensor]:
    stripped = True
    while stripped:
        stripped = False
        for wrapping in _WRAPPING_PREFIXES:
            if tensors and all(name.startswith(wrapping) for name in tensors):
                tensors = {name.removeprefix(wrapping): t for name, t in tensors.items()}
                notes.append(f"stripped the {wrapping!r} prefix that torch wrappers add")
                stripped = True
    # torch.compile on a submodule leaves "_orig_mod." inside the names.
    if any("._orig_mod." in name for name in tensors):
        tensors = {name.replace("._orig_mod.", "."): t for name, t in tensors.items()}
        notes.append("stripped the '_orig_mod.' that torch.compile adds inside names")
    return tensors


def _select(tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> dict[str, torch.Tensor]:
    selected = {
        name.removeprefix(prefix): tensor
        for name, tensor in tensors.items()
        if name.startswith(prefix)
    }
    if not selected:
        raise BadFile(
            f"no tensor in {path} starts with {prefix!r}; its prefixes: "
            f"{', '.join(submodule_prefixes(tensors)) or '(none)'}"
        )
    return selected


def submodule_prefixes(names: Iterable[str]) -> list[str]:
    """Every dotted prefix that ends before a tensor's own name (``encoder.``, ``encoder.lstm.``)."""
    prefixes: set[str] = set()
    for name in names:
        parts = name.split(".")[:-1]
        prefixes |= {".".join(parts[: end + 1]) + "." for end in range(len(parts))}
    return sorted(prefixes)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BadFile(f"{path} is not a valid safetensors file: {_first_line(error)}") from error


def _read_state_dict(path: Path) -> Mapping[Any, Any]:
    import torch

    with path.open("rb") as handle:
        head = handle.read(2)
    # torch.save writes a zip archive; before PyTorch 1.6, a pickle (protocol 2+).
    if not head:
        raise BadFile(f"weights file {path} is empty")
    if head != b"PK" and head[:1] != b"\x80":
        raise BadFile(f"{path} is not a PyTorch weights file (neither a zip archive nor a pickle)")
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
    if not isinstance(loaded, Mapping):
        raise BadFile(f"{path} holds a {type(loaded).__name__}, not a state dict of name -> tensor")
    return loaded


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


def check_weights(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    dtype: str,
    path: Path,
    parts: Sequence[WeightPart] = (),
    integer: Collection[str] = (),
) -> None:
    """Compare a file's tensors with the layer's declared names and shapes.

    The tensors must be floating point, finite, and within ``dtype``'s range, the
    dtype they are converted to, except those named in ``integer``: the integer
    buffers the layer's module holds (``BatchNorm``'s ``num_batches_tracked``),
    which must be integers and are loaded as they are. ``parts`` are the layer's weight parts, for advice on a whole-model
    checkpoint that holds them. Raises ``BadFile`` naming every problem.
    """
    import torch

    problems: list[str] = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing {_listed(missing)}")
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
    advice = _prefix_advice(tensors, expected, parts) if missing and unexpected else []
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
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    parts: Sequence[WeightPart],
) -> list[str | Setting]:
    """Advice for a whole-model checkpoint: which prefix holds the layer's tensors."""
    fitting = _holders(tensors, expected)
    if fitting:
        return [
            f"the file holds them under {fitting[0]!r}: select them with ",
            Setting("weights_prefix", fitting[0]),
        ]
    part_holders = {
        part.name: _holders(tensors, [key for key, name in part.keys.items() if name in expected])
        for part in parts
    }
    if parts and all(part_holders.values()):
        chosen = [f"{name}={holders[0]}" for name, holders in part_holders.items()]
        described = ", ".join(
            f"{part.description} under {part_holders[part.name][0]!r}" for part in parts
        )
        return [
            f"the file holds them as {described}: select them with ",
            Setting("weights_prefix", chosen[0], tuple(chosen[1:])),
        ]
    prefixes = [p for p in submodule_prefixes(tensors) if p.count(".") == 1]
    if prefixes:
        return [
            f"its tensors are under {', '.join(prefixes[:6])}: select one with ",
            Setting("weights_prefix", "PREFIX"),
        ]
    return []


def _holders(tensors: Mapping[str, torch.Tensor], wanted: Iterable[str]) -> list[str]:
    """The prefixes under which ``tensors`` holds every one of the ``wanted`` names."""
    wanted = list(wanted)
    candidates = {name[: -len(w)] for w in wanted for name in tensors if name.endswith("." + w)}
    return sorted(p for p in candidates if all(p + w in tensors for w in wanted))


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

"""Reading weights files safely and checking them against a layer's declared weights.

Two formats: ``.safetensors`` (no code can run from it by design) and PyTorch
state-dict files (``.pt``/``.pth``/``.bin``), read with ``weights_only=True`` passed
explicitly: the environment variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns
a bare ``torch.load`` back into a full unpickler that runs the file's code, but
an explicit argument wins over it.

Weights must already have the layer's dtype. ``load_state_dict`` would silently
cast float64 or integer tensors into a float32 layer, so the layer would no
longer compute what the file holds; layerport refuses instead, and says which
dtype or conversion fixes it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from layerport.dtypes import DTYPES
from layerport.errors import BadFile, Setting
from layerport.runtime.limits import check_allocation

if TYPE_CHECKING:
    import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat name -> tensor dict, without running code from it."""
    if not path.is_file():
        raise BadFile(
            f"weights file {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    check_allocation(path.stat().st_size, f"reading weights file {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        tensors = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        tensors = _read_state_dict(path)
    else:
        raise BadFile(
            f"weights file {path} must end in .safetensors, .pt, .pth or .bin, "
            f"got {suffix or 'no suffix'!r}"
        )
    return tensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BadFile(f"{path} is not a valid safetensors file: {_first_line(error)}") from error


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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
        wanted = re.search(r"GLOBAL (\S+)", str(error))
        reason = f"it would import {wanted.group(1)}" if wanted else "objects other than tensors"
        raise BadFile(
            f"{path} was refused ({reason}): layerport loads only plain state dicts of "
            "tensors (weights_only=True) and never runs code from a weights file"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
        raise BadFile(
            f"{path} is not a valid PyTorch weights file: {_first_line(error)}"
        ) from error
    if not isinstance(loaded, Mapping):
        raise BadFile(f"{path} holds a {type(loaded).__name__}, not a state dict of name -> tensor")
    not_named_tensors = [
        repr(key)
        for key, value in loaded.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if not_named_tensors:
        raise BadFile(
            f"{path} holds entries that are not named tensors: {', '.join(not_named_tensors[:5])}"
        )
    return dict(loaded)


def check_weights(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    dtype: str,
    path: Path,
) -> None:
    """Compare a file's tensors with the layer's declared names, shapes and dtype."""
    import torch

    problems: list[str] = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    wrong_dtype: dict[str, str] = {}
    for name in sorted(set(expected) & set(tensors)):
        tensor = tensors[name]
        storage = _storage_problem(name, tensor)
        if storage is not None:
            problems.append(storage)
        elif tuple(tensor.shape) != tuple(expected[name]):
            problems.append(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name])}"
            )
        elif str(tensor.dtype).removeprefix("torch.") != dtype:
            wrong_dtype[name] = str(tensor.dtype).removeprefix("torch.")
        elif not bool(torch.isfinite(tensor).all()):
            problems.append(f"{name} holds NaN or Inf")
    dtype_problem = _dtype_problem(wrong_dtype, dtype) if wrong_dtype else []
    if problems or dtype_problem:
        listed = "; ".join(problems) + ("; " if problems and dtype_problem else "")
        raise BadFile(f"weights in {path} do not fit the layer: {listed}", *dtype_problem)


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


def _dtype_problem(wrong_dtype: Mapping[str, str], dtype: str) -> list[str | Setting]:
    listed = ", ".join(f"{name} is {found}" for name, found in wrong_dtype.items())
    found = set(wrong_dtype.values())
    problem: list[str | Setting] = [
        f"{listed}, the layer is {dtype}; layerport never casts weights (convert the file to {dtype}"
    ]
    if len(found) == 1 and found <= set(DTYPES):
        problem += [" or pass ", Setting("dtype", found.pop())]
    return [*problem, ")"]


def _first_line(error: BaseException) -> str:
    """The first sentence of a dependency's error, which is often a page long."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(error).__name__

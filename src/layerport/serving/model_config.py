"""Triton's model configuration for an exported file, derived from its spec and the file itself.

Triton serves each model folder by its ``config.pbtxt`` (schema:
``model_config.proto`` in triton-inference-server/common). What goes wrong when
it is written by hand, and what this module derives instead:

- With ``max_batch_size > 0`` Triton owns the first dim of every input and
  output: it must be the batch and must not be listed. A layer qualifies only
  when *every* tensor has the spec's ``batch_dim`` first; a state in torch's
  layout (``h0`` of an ``lstm``: layers x directions first) does not, so such a
  layer gets ``max_batch_size: 0``, its full dims, and no dynamic batching.
- Every dynamic dim, and every dim derived from one, is ``-1``.
- An optional input (the rnn's ``h0``) is ``optional: true`` for the python
  backend, whose model fills it with zeros. Triton's onnxruntime backend binds
  only the inputs a request carries, and supports ``optional`` only for inputs
  the file gives a default (an overridable initializer, and then only with
  ``max_batch_size: 0``: triton-inference-server/onnxruntime_backend#180); in
  layerport's files ``h0`` is a required graph input, so that config requires it.
- Data types are the file's own, through ``dtypes.kserve_datatype``, so an int8
  file keeps its float32 inputs and outputs.

The file's layerport metadata (``runtime.metadata``) goes into the config's
``parameters``, so an operator, and ``verify --server``, see where a model came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from layerport.dtypes import kserve_datatype
from layerport.runtime.arrays import ArraySpec
from layerport.runtime.metadata import ExportRecord
from layerport.serving.pbtxt import Enum, as_list
from layerport.spec import LayerSpec

INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class ServingSettings:
    """How Triton schedules a model: batching and instances (``--target-option``s)."""

    max_batch_size: int = 32
    """The largest batch Triton forms, in samples; requests above it are refused.

    A new version of a model keeps the model's unless given (``keep_max_batch_size``)."""

    preferred_batch_size: int = 8
    """The batch size the dynamic batcher aims for, at most ``max_batch_size``."""

    max_queue_delay_us: int = 500
    """How long a request may wait for others to batch with, in microseconds."""

    instance_kind: str = "cpu"
    """``cpu`` or ``gpu``: where Triton runs the model's instances."""

    instance_count: int = 1
    """How many copies of the model run at once."""


@dataclass(frozen=True)
class Batching:
    """Whether Triton may batch a layer, and if not, why (for the export's summary)."""

    batched: bool
    reason: str | None = None


def batching(spec: LayerSpec) -> Batching:
    """Triton may batch ``spec``'s layer when every input and output has its batch dim first."""
    if spec.batch_dim is None:
        return Batching(False, f"{spec.name} declares no batch_dim")
    for tensor in (*spec.inputs, *spec.outputs):
        if not tensor.dims or tensor.dims[0] != spec.batch_dim:
            return Batching(
                False,
                f"{tensor.name} does not have {spec.batch_dim} first (torch's layout), so "
                "Triton cannot own the batch dim: max_batch_size 0, no dynamic batching",
            )
    return Batching(True)


def model_config(
    name: str,
    spec: LayerSpec,
    inputs: Sequence[ArraySpec],
    outputs: Sequence[ArraySpec],
    record: ExportRecord,
    backend: str,
    settings: ServingSettings,
    *,
    avoid_layout_optimizations: bool = False,
) -> dict[str, Any]:
    """The ``config.pbtxt`` of model ``name``, as a message for ``pbtxt.render``.

    ``inputs`` and ``outputs`` are the file's (``runtime.interface.array_spec_of``),
    in the spec's order and with its names, as every verified export has them.
    ``avoid_layout_optimizations`` asks the onnxruntime backend for its
    ``extended`` graph level (``optimization { graph { level: 1 } }``, see the
    backend's README), which leaves out the layout transformers, for a file
    that crashes onnxruntime's NCHWc transformer (``runtime.failures.crashes_nchwc_transformer``).
    """
    batched = batching(spec).batched
    optional = (
        {tensor.name for tensor in spec.inputs if tensor.optional} if backend == "python" else set()
    )

    def tensor_config(array: ArraySpec, is_input: bool) -> dict[str, Any]:
        dims = [-1 if isinstance(dim, str) else dim for dim in array.dims]
        entry: dict[str, Any] = {
            "name": array.name,
            "data_type": Enum("TYPE_" + kserve_datatype(array.dtype)),
            "dims": dims[1:] if batched else dims,
        }
        if is_input and array.name in optional:
            entry["optional"] = True
        return entry

    config: dict[str, Any] = {
        "name": name,
        "backend": backend,
        "max_batch_size": settings.max_batch_size if batched else 0,
        "input": [tensor_config(array, True) for array in inputs],
        "output": [tensor_config(array, False) for array in outputs],
    }
    if batched:
        config["dynamic_batching"] = {
            "preferred_batch_size": [min(settings.preferred_batch_size, settings.max_batch_size)],
            "max_queue_delay_microseconds": settings.max_queue_delay_us,
        }
    if avoid_layout_optimizations and backend == "onnxruntime":
        config["optimization"] = {"graph": {"level": 1}}
    config["instance_group"] = [
        {"count": settings.instance_count, "kind": Enum(INSTANCE_KINDS[settings.instance_kind])}
    ]
    config["parameters"] = [
        {"key": key, "value": {"string_value": value}} for key, value in record.to_props().items()
    ]
    return config


def io_signature(config: Mapping[str, Any]) -> dict[str, Any]:
    """What clients of a model depend on: backend, batching, and every input and output.

    Read from a parsed ``config.pbtxt`` or a config from ``model_config``, so the
    two compare equal exactly when a new version would serve the same requests.
    """

    def tensors(kind: str) -> list[tuple[str, str, tuple[int, ...], bool]]:
        return [
            (
                str(entry.get("name")),
                str(entry.get("data_type")),
                tuple(as_list(entry.get("dims"))),
                bool(entry.get("optional", False)),
            )
            for entry in as_list(config.get(kind))
        ]

    return {
        "backend": config.get("backend"),
        "batched": int(config.get("max_batch_size", 0)) > 0,
        "max_batch_size": int(config.get("max_batch_size", 0)),
        "input": tensors("input"),
        "output": tensors("output"),
    }


def signature_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """How two ``io_signature``s differ, in words, or ``None``."""
    if old["backend"] != new["backend"]:
        return f"its backend is {old['backend']}, the new export's is {new['backend']}"
    if old["batched"] != new["batched"]:
        return "one batches requests and the other cannot"
    for kind in ("input", "output"):
        if old[kind] != new[kind]:
            return f"its {kind}s are {_describe(old[kind])}, the new export's are {_describe(new[kind])}"
    if new["max_batch_size"] < old["max_batch_size"]:
        return (
            f"its max_batch_size is {old['max_batch_size']} and the new export's "
            f"{new['max_batch_size']} would refuse the batches its clients may send"
        )
    return None


def _describe(tensors: list[tuple[str, str, tuple[int, ...], bool]]) -> str:
    return ", ".join(
        f"{name} {dtype.removeprefix('TYPE_')} {list(dims)}{' optional' if optional else ''}"
        for name, dtype, dims, optional in tensors
    )


def record_of(parameters: Mapping[str, Any] | Sequence[Any] | None) -> ExportRecord | None:
    """The layerport metadata in a config's ``parameters``; ``None`` if it has none.

    Takes ``parameters`` as ``parse`` reads them from ``config.pbtxt`` (a list of
    ``{key, value}``) or as Triton's HTTP API returns them (a map of key to
    ``{"string_value": ...}``). Raises ``BadFile`` for damaged metadata.
    """
    if isinstance(parameters, Mapping):
        entries = [{"key": key, "value": value} for key, value in parameters.items()]
    else:
        entries = as_list(parameters)
    props = {
        str(entry.get("key")): str((entry.get("value") or {}).get("string_value", ""))
        for entry in entries
        if isinstance(entry, Mapping)
    }
    return ExportRecord.from_props(props)

"""What layerport records in an exported file's ``metadata_props``, and reading it back.

A file must describe itself to a deployment that has neither torch nor the
plugin: which layer and configuration it holds, where that came from, which
dims are dynamic, which inputs may be omitted, and how it was verified. Every
key is prefixed ``layerport.`` and structured values are JSON, so the file reads
well in Netron or ``onnx.load(...).metadata_props`` as well as in ``inspect``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from layerport.dtypes import QUANTIZATIONS
from layerport.errors import BadFile, one_line

if TYPE_CHECKING:
    import onnx

PREFIX = "layerport."
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportRecord:
    """The layerport metadata of one exported file."""

    layer: str
    qualified_name: str
    params: dict[str, Any]
    plugin: str
    plugin_version: str
    dtype: str
    dynamic_dims: dict[str, int]
    optional_inputs: list[str]
    opset: int
    versions: dict[str, str]
    seed: int | None = None
    weights_sha256: str | None = None  # of the tensors' content: see weights.tensors_sha256
    weights_prefix: str | None = None  # the submodule selected from a whole-model checkpoint
    weights_parts: dict[str, str] | None = None  # or the prefix of each of the layer's weight parts
    weights_key: str | None = None  # the training checkpoint's entry that held the tensors
    weights_dtype: str | None = None  # the weights file's own dtype, converted to ``dtype``
    quantization: dict[str, Any] | None = None  # the recipe of an int8 file (export.quantize)
    min_dims: dict[str, int] | None = (
        None  # dims whose smallest valid size is not 1 (0: may be empty)
    )
    max_dims: dict[str, int] | None = None  # dims with a declared largest size (a model's past)
    # The integer inputs' valid values, [low, high) by name: ids below the table's size.
    input_ranges: dict[str, list[int]] | None = None
    # A composed model's definition (layerport.model): its model file as data,
    # each layer's type qualified by its plugin, so the file rebuilds without it.
    model: dict[str, Any] | None = None
    # export --optimize: what each optimizer made, why it was refused, and the one kept.
    optimization: dict[str, Any] | None = None
    # How the file streams (LayerSpec.streaming): {"dim", "carry": [[input, output]], "grows"},
    # so a torch-free runtime can carry a KV cache from call to call (runtime.generation).
    streaming: dict[str, Any] | None = None
    # The export form the graph is in: "standard" (torch.onnx of forward as it is) or one of
    # the layer's forms (LayerSpec.forms), such as "fused".
    form: str = "standard"
    verification: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def quantize(self) -> str | None:
        """The quantization recipe of the file (``int8``), or ``None`` for a float file."""
        return self.quantization["quantize"] if self.quantization else None

    @property
    def selection(self) -> str | dict[str, str] | None:
        """The tensors' selection in the weights file, as ``weights_prefix`` arguments take it."""
        return self.weights_parts if self.weights_parts is not None else self.weights_prefix

    def to_props(self) -> dict[str, str]:
        """Flat string key/values for ``ModelProto.metadata_props``."""
        props = {}
        for key, value in asdict(self).items():
            if value is not None:
                props[PREFIX + key] = (
                    value if key in _PLAIN_TEXT else json.dumps(value, sort_keys=True)
                )
        return props

    def write_to(self, model: onnx.ModelProto) -> None:
        """Replace the model's ``metadata_props`` with this record."""
        del model.metadata_props[:]
        for key, value in self.to_props().items():
            model.metadata_props.add(key=key, value=value)

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> ExportRecord | None:
        """The record of a model; ``None`` for a file layerport did not export."""
        return cls.from_props({prop.key: prop.value for prop in model.metadata_props})

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ExportRecord | None:
        """Read the record back; ``None`` for a file layerport did not export."""
        ours = {
            key.removeprefix(PREFIX): value
            for key, value in props.items()
            if key.startswith(PREFIX)
        }
        if not ours:
            return None
        try:
            values: dict[str, Any] = {
                key: text if key in _PLAIN_TEXT else json.loads(text)
                for key, text in ours.items()
                if key in _FIELDS
            }
            record = cls(**values)
        except (TypeError, ValueError, RecursionError) as error:  # RecursionError: [[[[...
            raise BadFile(f"the file's layerport metadata is damaged: {one_line(error)}") from error
        problem = record._type_problem()
        if problem:
            raise BadFile(f"the file's layerport metadata is damaged: {problem}")
        return record

    def _type_problem(self) -> str | None:
        """What is of the wrong type, for metadata written by someone else."""
        scalar = (int, float, bool, str)
        checks = {
            "layer, qualified_name, plugin, plugin_version and dtype must be strings": all(
                isinstance(value, str)
                for value in (
                    self.layer,
                    self.qualified_name,
                    self.plugin,
                    self.plugin_version,
                    self.dtype,
                )
            ),
            "params must map names to numbers, flags or strings": isinstance(self.params, dict)
            and all(isinstance(k, str) and isinstance(v, scalar) for k, v in self.params.items()),
            "dynamic_dims must map names to sizes >= 1": isinstance(self.dynamic_dims, dict)
            and all(
                isinstance(k, str) and _is_int(v) and v >= 1 for k, v in self.dynamic_dims.items()
            ),
            "optional_inputs must be a list of names": isinstance(self.optional_inputs, list)
            and all(isinstance(name, str) for name in self.optional_inputs),
            "opset and format must be integers": _is_int(self.opset) and _is_int(self.format),
            "seed must be an integer >= 0": self.seed is None
            or (_is_int(self.seed) and self.seed >= 0),
            "weights_sha256, weights_prefix, weights_key and weights_dtype must be strings": all(
                value is None or isinstance(value, str)
                for value in (
                    self.weights_sha256,
                    self.weights_prefix,
                    self.weights_key,
                    self.weights_dtype,
                )
            ),
            "weights_parts must map weight parts to prefixes": self.weights_parts is None
            or (
                isinstance(self.weights_parts, dict)
                and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in self.weights_parts.items()
                )
            ),
            "form must be a string": isinstance(self.form, str),
            "model and optimization must be objects": all(
                value is None or isinstance(value, dict)
                for value in (self.model, self.optimization)
            ),
            "versions and verification must be objects": isinstance(self.versions, dict)
            and isinstance(self.verification, dict),
            "min_dims must map names to sizes >= 0": self.min_dims is None
            or (
                isinstance(self.min_dims, dict)
                and all(
                    isinstance(k, str) and _is_int(v) and v >= 0 for k, v in self.min_dims.items()
                )
            ),
            "max_dims must map names to sizes >= 1": self.max_dims is None
            or (
                isinstance(self.max_dims, dict)
                and all(
                    isinstance(k, str) and _is_int(v) and v >= 1 for k, v in self.max_dims.items()
                )
            ),
            "input_ranges must map names to [low, high] with low < high": self.input_ranges is None
            or (
                isinstance(self.input_ranges, dict)
                and all(
                    isinstance(k, str)
                    and isinstance(v, list)
                    and len(v) == 2
                    and all(_is_int(bound) for bound in v)
                    and v[0] < v[1]
                    for k, v in self.input_ranges.items()
                )
            ),
            "quantization must be an object naming its recipe, library, mode, weight_type "
            "and ops": self.quantization is None or _is_recipe(self.quantization),
            "streaming must be an object with a dim, carry pairs of names and grows": self.streaming
            is None
            or _is_streaming(self.streaming),
        }
        return next((message for message, ok in checks.items() if not ok), None)


def _is_recipe(value: object) -> bool:
    """Whether ``value`` is a quantization recipe as ``export.quantize`` writes it."""
    return (
        isinstance(value, dict)
        and value.get("quantize") in QUANTIZATIONS
        and all(isinstance(value.get(key), str) for key in ("library", "mode", "weight_type"))
        and isinstance(value.get("ops"), dict)
        and all(isinstance(k, str) and _is_int(v) for k, v in value["ops"].items())
    )


def _is_streaming(value: object) -> bool:
    """Whether ``value`` is a stream as ``pipeline`` records ``LayerSpec.streaming``."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("dim"), str)
        and (value.get("grows") is None or isinstance(value.get("grows"), str))
        and isinstance(value.get("carry"), list)
        and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, str) for n in pair)
            for pair in value["carry"]
        )
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Plain strings are stored as they are, so they read well in any ONNX viewer.
_PLAIN_TEXT = {
    "layer",
    "qualified_name",
    "plugin",
    "plugin_version",
    "dtype",
    "weights_sha256",
    "weights_prefix",
    "weights_key",
    "weights_dtype",
    "form",
}
_FIELDS = {item.name for item in fields(ExportRecord)}

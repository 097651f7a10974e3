"""A model file: registered layers composed into one model, read from TOML.

The file is the contract of issue 23 (see docs/models.md)::

    [model]
    name = "tagger"

    [inputs.ids]
    dtype = "int64"
    shape = ["batch", "seq"]

    [[layer]]
    name = "embed"
    use = "embedding"        # any registered layer; PLUGIN:LAYER allowed
    weights = "embedding."   # a prefix in the checkpoint, or {weight = "key", ...}
    input = "ids"            # default: the previous layer's first output

    [outputs]
    tags = "head.y"

Reading checks the file's form only: every key known, every value of its
type, names unique. Whether the layers exist and fit together is
``layerport.model.compose``'s job, which needs the registry. Nothing here
imports torch. Every error names the file, the line where it can find one,
and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from layerport.dtypes import DTYPES, FLOAT, TENSOR_DTYPES
from layerport.errors import BadFile, InvalidModel, one_line

MODEL_SUFFIX = ".toml"
# Layer and model names become module attributes and ONNX value names.
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
_MODEL_KEYS = {"name", "description"}
_INPUT_KEYS = {"dtype", "shape", "high"}
_LAYER_KEYS = {"name", "use", "weights", "params", "input"}
_TOP_KEYS = {"model", "inputs", "dims", "layer", "outputs"}
_DIM_KEYS = ("default", "check_size", "max")
# A model file is a few kilobytes; a larger one is not one.
MAX_MODEL_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelInput:
    """One of the model's inputs: its dims (names of dynamic dims, or sizes) and dtype."""

    name: str
    shape: tuple[str | int, ...]
    dtype: str = FLOAT
    """``float`` (the model's precision), ``int64``, ``int32`` or ``bool``."""
    high: int | None = None
    """An integer input's values lie in [0, high); inferred from the layers it feeds if left out."""


@dataclass(frozen=True)
class ModelDim:
    """A ``[dims.NAME]`` table: the size a dynamic dim is traced at, and the larger one
    verification also tries. Either left out takes the first layer's it feeds."""

    name: str
    default: int | None = None
    check_size: int | None = None
    max: int | None = None
    """The largest size the model takes (a KV cache's past: the positions it was trained
    on); a file records it, and a larger input is refused."""


@dataclass(frozen=True)
class ModelLayer:
    """One ``[[layer]]``: a registered layer type, its weights and where its inputs come from."""

    name: str
    use: str
    weights: str | dict[str, str] | None = None
    """A prefix in the checkpoint, or the checkpoint's key for each of the layer's weights
    (or the prefix of each of its weight parts)."""
    params: dict[str, Any] = field(default_factory=dict)
    input: str | dict[str, str] | None = None
    """The source of the first input, or the source of each input by the layer's input
    name; a source is a model input, ``LAYER`` (its first output) or ``LAYER.OUTPUT``."""


@dataclass(frozen=True)
class ModelDefinition:
    """A model file, read and checked for form (``read_model_file``)."""

    name: str
    inputs: tuple[ModelInput, ...]
    layers: tuple[ModelLayer, ...]
    outputs: dict[str, str]
    """Output name -> source; empty means every output of the last layer."""
    description: str = ""
    dims: tuple[ModelDim, ...] = ()
    source: str = "the model file"
    """Where the definition came from, for messages: the file's name, or the record's."""
    text: str = field(default="", repr=False, compare=False)
    """The file's TOML, to find the line of a key for messages."""

    def where(self, layer: int | None = None, key: str | None = None) -> str:
        """``tagger.toml:14: layer 'head', key input`` for a message about that key."""
        shown = None if layer is None else self.layers[layer].name
        return _place(self.source, self.text, layer, shown, key)

    def to_json(self, uses: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The definition as JSON-able data, for an exported file's record.

        ``uses`` replaces layers' ``use`` by name: the record names each layer's
        type with its plugin (``layerport-nn:embedding``).
        """
        uses = uses or {}
        data: dict[str, Any] = {"model": {"name": self.name}}
        if self.description:
            data["model"]["description"] = self.description
        data["inputs"] = {
            entry.name: {
                "dtype": entry.dtype,
                "shape": list(entry.shape),
                **({"high": entry.high} if entry.high is not None else {}),
            }
            for entry in self.inputs
        }
        data["layer"] = [
            {
                key: value
                for key, value in (
                    ("name", layer.name),
                    ("use", uses.get(layer.name, layer.use)),
                    ("weights", layer.weights),
                    ("params", layer.params or None),
                    ("input", layer.input),
                )
                if value is not None
            }
            for layer in self.layers
        ]
        if self.outputs:
            data["outputs"] = dict(self.outputs)
        if self.dims:
            data["dims"] = {
                dim.name: {
                    key: value
                    for key, value in (
                        ("default", dim.default),
                        ("check_size", dim.check_size),
                        ("max", dim.max),
                    )
                    if value is not None
                }
                for dim in self.dims
            }
        return data


def is_model_file(name: str) -> bool:
    """Whether a command's LAYER argument names a model file rather than a layer type.

    Layer names cannot contain a dot (``layerport.spec``), so the suffix decides.
    """
    return name.lower().endswith(MODEL_SUFFIX)


def read_model_file(path: Path) -> ModelDefinition:
    """Read and check a model file's form; ``InvalidModel`` (exit 2) naming the key if bad,
    ``BadFile`` if the file cannot be read as TOML."""
    if not path.is_file():
        raise BadFile(
            f"model file {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    if path.stat().st_size > MAX_MODEL_FILE_BYTES:
        raise BadFile(f"model file {path} is larger than {MAX_MODEL_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as error:
        raise BadFile(f"model file {path} is not UTF-8 text: {one_line(error)}") from error
    except tomllib.TOMLDecodeError as error:
        raise BadFile(f"model file {path} is not valid TOML: {one_line(error)}") from error
    return parse_model(data, source=path.name, text=text)


def parse_model(
    data: Mapping[str, Any], source: str = "the model file", text: str = ""
) -> ModelDefinition:
    """Check a model's data (a parsed model file, or a record's copy) and build its definition."""
    reader = _Reader(source, text)
    reader.keys(data, _TOP_KEYS, None)
    model = reader.table(data.get("model"), "model", required=True)
    reader.keys(model, _MODEL_KEYS, "model")
    name = reader.string(model.get("name"), "model.name")
    if not _MODEL_NAME.match(name):
        raise reader.error(
            "model.name", f"must be lowercase letters, digits, _ and -, got {name!r}"
        )
    description = model.get("description", "")
    if not isinstance(description, str):
        raise reader.error("model.description", "must be a string")
    inputs = tuple(
        reader.model_input(input_name, value)
        for input_name, value in reader.table(data.get("inputs"), "inputs", required=True).items()
    )
    if not inputs:
        raise reader.error("inputs", "declares no input; add [inputs.NAME] with dtype and shape")
    raw_layers = data.get("layer")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise reader.error("layer", "declares no layer; add [[layer]] tables with name and use")
    layers = tuple(reader.layer(index, value) for index, value in enumerate(raw_layers))
    taken: dict[str, str] = {entry.name: "an input" for entry in inputs}
    for index, layer in enumerate(layers):
        if layer.name in taken:
            raise InvalidModel(
                f"{reader.where(index, 'name')}: the name is already taken by {taken[layer.name]}"
            )
        taken[layer.name] = "a layer"
    outputs = {
        key: reader.string(value, f"outputs.{key}")
        for key, value in reader.table(data.get("outputs"), "outputs").items()
    }
    for key in outputs:
        reader.name(key, f"outputs.{key}")
    # Whether each names a dim of the model is checked where the dims are known: a
    # layer's state (a KV cache's past) adds its own (layerport.model.compose).
    dims = tuple(
        reader.model_dim(dim_name, value)
        for dim_name, value in reader.table(data.get("dims"), "dims").items()
    )
    return ModelDefinition(
        name, inputs, layers, outputs, description, dims=dims, source=source, text=text
    )


class _Reader:
    """Type checks that name the key, and the line, of what they refuse."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text
        self.layer_names: list[str] = []

    def where(self, layer: int | None, key: str | None) -> str:
        shown = None
        if layer is not None and layer < len(self.layer_names):
            shown = self.layer_names[layer]
        return _place(self.source, self.text, layer, shown, key)

    def error(self, key: str, problem: str, layer: int | None = None) -> InvalidModel:
        return InvalidModel(f"{self.where(layer, key)}: {problem}")

    def keys(
        self, table: Mapping[str, Any], known: set[str], where: str | None, layer: int | None = None
    ) -> None:
        for key in table:
            if key not in known:
                shown = f"{where}.{key}" if where and layer is None else key
                raise self.error(
                    shown, f"unknown key; known keys: {', '.join(sorted(known))}", layer
                )

    def table(self, value: object, key: str, *, required: bool = False) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            missing = f"is missing: add a [{key}] table" if value is None else "must be a table"
            raise self.error(key, missing)
        return value

    def string(self, value: object, key: str, layer: int | None = None) -> str:
        if not isinstance(value, str) or not value:
            problem = (
                "is missing" if value is None else f"must be a non-empty string, got {value!r}"
            )
            raise self.error(key, problem, layer)
        return value

    def name(self, value: str, key: str, layer: int | None = None) -> str:
        if not _NAME.match(value):
            raise self.error(
                key,
                f"must be lowercase letters, digits and _, starting with a letter, got {value!r}",
                layer,
            )
        return value

    def model_input(self, name: str, value: object) -> ModelInput:
        key = f"inputs.{name}"
        self.name(name, key)
        table = self.table(value, key, required=True)
        self.keys(table, _INPUT_KEYS, key)
        dtype = table.get("dtype", FLOAT)
        if dtype in DTYPES:
            dtype = FLOAT  # a float input takes the model's precision, whichever it is exported in
        if dtype not in TENSOR_DTYPES:
            raise self.error(
                f"{key}.dtype",
                f"must be one of {', '.join(TENSOR_DTYPES)} (or a float dtype), got {dtype!r}",
            )
        shape = table.get("shape")
        if not isinstance(shape, list) or not shape:
            raise self.error(
                f"{key}.shape", 'must be a list of dim names and sizes, such as ["batch", "seq"]'
            )
        for dim in shape:
            if isinstance(dim, str):
                self.name(dim, f"{key}.shape")
            elif isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise self.error(
                    f"{key}.shape", f"a dim is a name or a size of at least 1, got {dim!r}"
                )
        high = table.get("high")
        if high is not None and (
            dtype not in ("int64", "int32")
            or isinstance(high, bool)
            or not isinstance(high, int)
            or high < 1
        ):
            raise self.error(
                f"{key}.high", "is the bound of an integer input's values: an integer of at least 1"
            )
        return ModelInput(name, tuple(shape), dtype, high)

    def model_dim(self, name: str, value: object) -> ModelDim:
        key = f"dims.{name}"
        table = self.table(value, key, required=True)
        self.keys(table, set(_DIM_KEYS), key)
        sizes = {}
        for size_key in _DIM_KEYS:
            size = table.get(size_key)
            if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or size < 2
            ):
                raise self.error(
                    f"{key}.{size_key}", f"must be an integer of at least 2, got {size!r}"
                )
            sizes[size_key] = size
        if sizes["max"] is not None and (sizes["default"] or 0) > sizes["max"]:
            raise self.error(f"{key}.default", f"must be at most max = {sizes['max']}")
        return ModelDim(name, sizes["default"], sizes["check_size"], sizes["max"])

    def layer(self, index: int, value: object) -> ModelLayer:
        if not isinstance(value, dict):
            raise self.error("layer", f"[[layer]] number {index + 1} must be a table")
        name = value.get("name")
        self.layer_names.append(name if isinstance(name, str) else "")
        self.keys(value, _LAYER_KEYS, "layer", index)
        name = self.name(self.string(name, "name", index), "name", index)
        use = self.string(value.get("use"), "use", index)
        weights = value.get("weights")
        if weights is not None and not isinstance(weights, str) and not _is_string_table(weights):
            raise self.error(
                "weights", "must be a prefix, or a table of weight name = checkpoint key", index
            )
        params = value.get("params", {})
        if not isinstance(params, dict):
            raise self.error("params", "must be a table, such as { hidden_size = 64 }", index)
        source = value.get("input")
        if source is not None and not isinstance(source, str) and not _is_string_table(source):
            raise self.error(
                "input",
                "must be a source (INPUT, LAYER or LAYER.OUTPUT) or a table of input = source",
                index,
            )
        return ModelLayer(name, use, weights, dict(params), source)


def _place(source: str, text: str, layer: int | None, name: str | None, key: str | None) -> str:
    """``tagger.toml:14: layer 'head', key input``: where a message's problem is."""
    place = source
    line = _line_of(text, layer, key)
    if line is not None:
        place += f":{line}"
    if layer is not None:
        place += f": layer {name!r}" if name else f": [[layer]] number {layer + 1}"
    if key is not None:
        place += f", key {key}" if layer is not None else f": key {key}"
    return place


def _is_string_table(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def _line_of(text: str, layer: int | None, key: str | None) -> int | None:
    """The 1-based line of ``key`` in the file (within the ``layer``-th ``[[layer]]``), if found.

    tomllib keeps no positions, so this reads the text: good enough to point a
    person at the line, and a message without it still names the key.
    """
    if not text:
        return None
    lines = text.splitlines()
    start, end = 0, len(lines)
    if layer is not None:
        headers = [i for i, line in enumerate(lines) if line.strip().startswith("[[layer]]")]
        if layer >= len(headers):
            return None
        start = headers[layer]
        following = [
            i for i, line in enumerate(lines) if i > start and line.strip().startswith("[")
        ]
        end = following[0] if following else len(lines)
        if key is None:
            return start + 1
    if key is None:
        return None
    *tables, last = key.split(".")
    whole = _header(key)
    table_line = next((i for i, line in enumerate(lines) if whole.match(line.strip())), None)
    if layer is None and table_line is not None:
        return table_line + 1  # the key is a table of its own: [dims.seq]
    if layer is None and tables:
        header = _header(".".join(tables))
        found = [i for i, line in enumerate(lines) if header.match(line.strip())]
        if found:
            start = found[0]
            following = [
                i for i, line in enumerate(lines) if i > start and line.strip().startswith("[")
            ]
            end = following[0] if following else len(lines)
        elif tables[0] not in ("model", "inputs", "outputs"):
            return None
    assignment = re.compile(r"^\s*" + re.escape(last) + r"\s*=")
    for i in range(start, end):
        if assignment.match(lines[i]):
            return i + 1
    return start + 1 if (layer is not None or tables) and start < len(lines) else None


def _header(key: str) -> re.Pattern[str]:
    """``[inputs.ids]`` for the key ``inputs.ids``, spaces allowed around the dots."""
    return re.compile(r"^\[\s*" + r"\s*\.\s*".join(map(re.escape, key.split("."))) + r"\s*\]")

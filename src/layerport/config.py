"""A layer configuration: which layer, its parameters, dim sizes, dtype and weights.

Everything here is checked before anything is built or allocated, and nothing
here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from layerport.dtypes import DEFAULT_DTYPE, DTYPES, Tolerance, precision
from layerport.errors import (
    InvalidParameter,
    LayerportError,
    Setting,
    UnknownLayer,
    UserInputError,
)
from layerport.registry import RegisteredLayer, Registry
from layerport.runtime.limits import check_allocation
from layerport.runtime.metadata import ExportRecord
from layerport.spec import LayerSpec, ParamValue, Tensor

if TYPE_CHECKING:
    import numpy as np

    from layerport.model.definition import ModelDefinition
    from layerport.runtime.arrays import ArraySpec
    from layerport.weights import Checkpoint, Fits, WeightsFile


@dataclass(frozen=True)
class LayerConfig:
    """A fully resolved and validated request for one layer instance."""

    layer: RegisteredLayer
    params: Mapping[str, ParamValue]
    dims: Mapping[str, int]
    dtype: str = DEFAULT_DTYPE
    seed: int = 0
    weights: Path | None = None
    # The submodule of a whole-model checkpoint, or the prefix of each weight part.
    weights_prefix: str | Mapping[str, str] | None = None
    weights_dtype: str | None = None  # the weights file's own dtype, before any conversion
    notes: tuple[str, ...] = ()  # how the weights were found, for the user
    # Per tensor, the non-zero weights converting to ``dtype`` made zero or subnormal.
    underflow: tuple[str, ...] = ()
    # The layer's tensors from ``weights``, named as the layer names them: read
    # once by ``resolve_config`` and handed down to every stage that needs them.
    checkpoint: Checkpoint | None = field(default=None, repr=False, compare=False)
    # A composed model's definition (``layerport.model``): the file's record keeps it.
    model: ModelDefinition | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> LayerSpec:
        return self.layer.spec

    def shape(self, tensor: Tensor, dims: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The concrete shape of ``tensor``, at ``dims`` or at this configuration's dims."""
        return self.spec.shape(tensor, self.params, self.dims if dims is None else dims)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        with self.layer.plugin_code("weights()"):
            return dict(self.spec.weights(self.params))

    def weight_bytes(self) -> int:
        itemsize = precision(self.dtype).itemsize
        return sum(math.prod(shape) * itemsize for shape in self.weight_shapes().values())

    def min_dims(self) -> dict[str, int]:
        """The dims whose smallest valid size is not 1 (0: an empty KV cache), as a file
        records them and a session checks inputs against them."""
        smallest = {dim.name: dim.smallest(self.params) for dim in self.spec.dims}
        return {name: size for name, size in smallest.items() if size != 1}

    def with_dims(self, dims: Mapping[str, int]) -> LayerConfig:
        """This configuration at other dim sizes; ``InvalidDim`` below a dim's smallest size."""
        self.spec.check_dims(dims, self.params)
        return dataclasses.replace(self, dims=dict(dims))

    def dims_of(self, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
        """This configuration's dims, with the sizes that ``arrays`` (inputs by name) have."""
        dims = dict(self.dims)
        for tensor in self.spec.inputs:
            if tensor.name in arrays:
                for axis, name in self.spec.dynamic_axes(tensor).items():
                    dims[name] = int(arrays[tensor.name].shape[axis])
        return dims

    def tolerance(
        self, atol: float | None = None, rtol: float | None = None, quantize: str | None = None
    ) -> Tolerance:
        """The layer's tolerance for this dtype, or for the ``quantize`` recipe's files, with
        ``atol`` or ``rtol`` overridden if given."""
        default = self.spec.tolerance(quantize or self.dtype)
        if atol is None and rtol is None:
            return default
        return Tolerance(
            atol=default.atol if atol is None else atol, rtol=default.rtol if rtol is None else rtol
        )

    def tensor_dtype(self, tensor: Tensor) -> str:
        """The element type of one of the layer's tensors: its own, or this configuration's precision."""
        return self.spec.tensor_dtype(tensor, self.dtype)

    def value_ranges(self) -> dict[str, tuple[int, int]]:
        """``(low, high)`` by input name, for the integer inputs (``high`` exclusive)."""
        ranges = {}
        for tensor in self.spec.inputs:
            values = self.spec.value_range(tensor, self.params)
            if values is not None:
                ranges[tensor.name] = values
        return ranges

    def input_specs(self) -> list[ArraySpec]:
        """What each input must look like: dynamic dims by name, fixed dims by size, its dtype
        and, for an integer input, its valid values."""
        from layerport.runtime.arrays import ArraySpec

        dynamic = {dim.name for dim in self.spec.dims}
        ranges = self.value_ranges()
        return [
            ArraySpec(
                name=tensor.name,
                dims=tuple(
                    dim if dim in dynamic else size
                    for dim, size in zip(tensor.dims, self.shape(tensor), strict=True)
                ),
                dtype=self.tensor_dtype(tensor),
                optional=tensor.optional,
                values=ranges.get(tensor.name),
            )
            for tensor in self.spec.inputs
        ]

    def random_inputs(
        self, seed: int | None = None, *, include_optional: bool = False
    ) -> dict[str, np.ndarray]:
        """Random values for every required input (and optional ones if asked), at this
        configuration's dims: standard normal in its precision, integers within their
        valid values, random masks (see ``runtime.arrays.random_inputs``).

        Drawn from ``seed``, else from this configuration's seed.
        """
        from layerport.runtime.arrays import random_inputs

        tensors = [tensor for tensor in self.spec.inputs if include_optional or not tensor.optional]
        return random_inputs(
            {tensor.name: self.shape(tensor) for tensor in tensors},
            {tensor.name: self.tensor_dtype(tensor) for tensor in tensors},
            self.seed if seed is None else seed,
            self.value_ranges(),
        )


def resolve_config(
    registry: Registry,
    layer_name: str,
    params: Mapping[str, object] | None = None,
    dims: Mapping[str, int] | None = None,
    dtype: str | None = None,
    seed: int = 0,
    weights: Path | WeightsFile | None = None,
    weights_prefix: str | Mapping[str, str] | None = None,
) -> LayerConfig:
    """Look the layer up and check every choice against its spec.

    ``weights`` is a weights file's path, or the file already read
    (``layerport.weights.read_weights_file``); either way it is read once, and
    the layer's tensors travel on the configuration (``LayerConfig.checkpoint``).

    ``dtype`` ``None`` means the weights' own dtype, or float32 without weights.
    A ``dtype`` that differs from the weights' converts them (with a note): a
    deployer exports a float32 checkpoint in float16 that way. Raises
    ``UserInputError`` for a precision the layer does not declare.

    With ``weights``, a layer whose spec declares ``params_from_weights`` takes
    the sizes the tensors imply; a given parameter must agree with them.
    ``weights_prefix`` selects one submodule of a whole-model checkpoint
    (``"encoder.lstm."``), or maps each of the layer's ``weight_parts`` to the
    submodule that holds it (``{"recurrence": "rnn.", "head": "fc."}``).
    """
    from layerport.model import is_model_file

    if is_model_file(layer_name):
        from layerport.model import read_model_file, resolve_model_config

        definition = read_model_file(Path(layer_name))
        return resolve_model_config(
            registry,
            definition,
            params=params,
            dims=dims,
            dtype=dtype,
            seed=seed,
            weights=weights,
            weights_prefix=weights_prefix,
        )
    layer = registry.resolve(layer_name)
    if dtype is not None and dtype not in DTYPES:
        raise UserInputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidParameter(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    if weights_prefix is not None and weights is None:
        raise UserInputError(
            "a weights prefix selects tensors from a weights file; pass one with ",
            Setting("weights"),
        )
    resolved = layer.spec.resolve_params(params)
    notes: tuple[str, ...] = ()
    underflow: tuple[str, ...] = ()
    weights_dtype = None
    checkpoint = None
    if weights is not None:
        from layerport.weights import (
            check_weight_ranks,
            conversion_underflow,
            fitting_prefixes,
            layer_checkpoint,
            read_weights_file,
            weights_dtype_of,
        )

        source = weights if not isinstance(weights, Path) else read_weights_file(weights)
        weights = source.path
        fits = _fits(layer, resolved)
        checkpoint = layer_checkpoint(source, weights_prefix, layer.spec.weight_parts, fits)
        notes = checkpoint.notes
        shapes = {name: tuple(tensor.shape) for name, tensor in checkpoint.tensors.items()}
        check_weight_ranks(shapes, layer.spec, resolved, weights)
        if not isinstance(weights_prefix, Mapping) and not fits(shapes):
            # check_weights will refuse them: name every prefix that would fit.
            fitting = tuple(fitting_prefixes(source, fits))
            checkpoint = dataclasses.replace(checkpoint, fitting=fitting)
        resolved = _params_from_weights(layer, resolved, params or {}, shapes, weights)
        weights_dtype = weights_dtype_of(checkpoint.tensors)
        if dtype is None and weights_dtype is not None:
            dtype = _weights_precision(layer.spec, weights_dtype, weights)
        elif dtype is not None and dtype != weights_dtype and weights_dtype is not None:
            notes += (f"converting the weights from {weights_dtype} to {dtype}",)
            underflow = conversion_underflow(checkpoint.tensors, dtype)
            notes += tuple(f"converting to {dtype}, {words}" for words in underflow)
    dtype = dtype or DEFAULT_DTYPE
    layer.spec.check_precision(dtype)
    config = LayerConfig(
        layer=layer,
        params=resolved,
        dims=layer.spec.resolve_dims(dims, resolved),
        dtype=dtype,
        seed=seed,
        weights=weights,
        weights_prefix=weights_prefix,
        weights_dtype=weights_dtype,
        notes=notes,
        underflow=underflow,
        checkpoint=checkpoint,
    )
    check_memory(config)
    return config


def _fits(layer: RegisteredLayer, resolved: dict[str, ParamValue]) -> Fits:
    """Whether tensors (by name, with shapes) are the whole of ``layer``'s weights.

    The sizes are read from the shapes where the layer can (``params_from_weights``),
    so a prefix fits by its names: a ``-p`` that contradicts it is refused after
    it is chosen, saying so.
    """

    def fits(shapes: Mapping[str, tuple[int, ...]]) -> bool:
        try:
            params = _params_from_weights(layer, resolved, {}, shapes, Path())
            with layer.plugin_code("weights()"):
                expected = layer.spec.weights(params)
        except LayerportError:
            return False
        return set(expected) == set(shapes)

    return fits


def _weights_precision(spec: LayerSpec, weights_dtype: str, path: Path) -> str:
    """The dtype a layer takes from its weights when no dtype is asked for."""
    if weights_dtype not in DTYPES:
        raise UserInputError(
            f"the weights in {path} mix dtypes ({weights_dtype}); convert them all with ",
            Setting("dtype", DEFAULT_DTYPE),
        )
    if weights_dtype not in spec.precisions:
        raise UserInputError(
            f"the weights in {path} are {weights_dtype}, which layer {spec.name!r} does not "
            f"support ({', '.join(spec.precisions)}); convert them with ",
            Setting("dtype", next(iter(spec.precisions))),
        )
    return weights_dtype


def _params_from_weights(
    layer: RegisteredLayer,
    resolved: dict[str, ParamValue],
    given: Mapping[str, object],
    shapes: Mapping[str, tuple[int, ...]],
    path: Path,
) -> dict[str, ParamValue]:
    """The parameters with the sizes ``shapes`` imply; a given one must agree with them."""
    if layer.spec.params_from_weights is None:
        return resolved
    with layer.plugin_code("params_from_weights()"):
        try:
            raw = layer.spec.implied_params(shapes, resolved)
        except (KeyError, IndexError):
            raw = None  # the tensors do not even name the layer's weights
    if raw is None:
        return resolved  # check_weights will say which are missing, and where they are
    # Only what the weights determine: resolve_params fills in every default too,
    # and a default (nonlinearity=tanh) is not something the weights imply.
    implied = {name: value for name, value in layer.spec.resolve_params(raw).items() if name in raw}
    for name in given:
        if name in implied and resolved[name] != implied[name]:
            from layerport.weights import size_witness

            def infer(probe: Mapping[str, tuple[int, ...]]) -> Mapping[str, object]:
                return layer.spec.implied_params(probe, resolved) or {}

            witness = size_witness(infer, shapes, name)
            raise InvalidParameter(
                f"parameter {name} is {_shown(resolved[name])}, but the weights in {path} "
                f"imply {name}={_shown(implied[name])}"
                + (f" ({witness})" if witness else "")
                + "; drop it, and the weights set it"
            )
    return {**resolved, **{name: value for name, value in implied.items() if name not in given}}


def _shown(value: ParamValue) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def bind_inputs(
    config: LayerConfig,
    arrays: Mapping[str, np.ndarray],
    *,
    explicit_dims: Mapping[str, int] | None = None,
) -> tuple[LayerConfig, dict[str, np.ndarray], list[str]]:
    """Check arrays the user gave against the layer's inputs, and take their dims.

    The arrays set the dynamic dims; a dim the user also gave explicitly
    (``explicit_dims``) must agree with them. Returns the configuration at those
    dims, the arrays, and notes for the user (such as non-finite values).
    """
    from layerport.runtime.arrays import check_arrays

    # A dim declared to take 0 (an empty KV cache) may be empty in the arrays.
    may_be_empty = {dim.name: 0 for dim in config.spec.dims if dim.smallest(config.params) == 0}
    checked, notes = check_arrays(arrays, config.input_specs(), may_be_empty)
    explicit_dims = explicit_dims or {}
    dims = dict(config.dims)
    for tensor in config.spec.inputs:
        for axis, name in config.spec.dynamic_axes(tensor).items():
            size = int(checked[tensor.name].shape[axis])
            if name in explicit_dims and explicit_dims[name] != size:
                raise UserInputError(
                    f"dim {name} is {explicit_dims[name]} from ",
                    Setting("dims"),
                    f" but {size} in input {tensor.name}",
                )
            dims[name] = size
    config = config.with_dims(dims)
    check_memory(config)
    return config, checked, notes


def estimate_bytes(config: LayerConfig, dims: Mapping[str, int] | None = None) -> int:
    """A generous estimate of the memory one forward pass needs.

    Weights, inputs and outputs, plus as much again for intermediates (an RNN
    keeps every hidden state), then doubled for the eager and onnxruntime copies
    a verification holds at once.
    """
    itemsize = precision(config.dtype).itemsize
    tensors = config.spec.inputs + config.spec.outputs
    activations = sum(math.prod(config.shape(tensor, dims)) for tensor in tensors) * itemsize
    return 2 * (config.weight_bytes() + 2 * activations)


def check_memory(config: LayerConfig, dims: Mapping[str, int] | None = None) -> None:
    """Refuse a configuration that would exhaust memory, before allocating anything."""
    check_allocation(estimate_bytes(config, dims), f"layer {config.spec.name} with these sizes")


def config_from_record(
    registry: Registry,
    record: ExportRecord,
    *,
    weights: Path | None = None,
    dims: Mapping[str, int] | None = None,
) -> LayerConfig:
    """Rebuild the configuration an exported file records, to check the file against it.

    A file exported from a weights file needs that file again; the pipeline
    checks that its tensors are the ones recorded, or the check would compare
    against other weights. The file is read once, here.
    """
    if record.weights_sha256 is not None:
        if weights is None:
            where = f" (its tensors under {record.selection!r})" if record.selection else ""
            raise UserInputError(
                f"this file was exported from a weights file{where}; pass the same file with ",
                Setting("weights"),
            )
    elif weights is not None:
        raise UserInputError(
            f"this file was exported from seed {record.seed}, not from a weights file; drop ",
            Setting("weights"),
        )
    export_dims = dict(record.dynamic_dims)
    export_dims.update(dims or {})
    if record.model is not None:
        from layerport.model import parse_model, resolve_model_config

        return resolve_model_config(
            registry,
            parse_model(record.model, source="the file's record"),
            dims=export_dims,
            dtype=record.dtype,
            seed=record.seed if record.seed is not None else 0,
            weights=weights,
        )
    try:
        registry.resolve(record.qualified_name)
    except UnknownLayer as error:
        raise UnknownLayer(
            f"this file was exported by {record.plugin} {record.plugin_version} (layer "
            f"{record.layer}), which is not installed; install it to rebuild the layer ({error})"
        ) from error
    source = None
    if weights is not None:
        from layerport.weights import read_weights_file

        source = read_weights_file(weights)
    return resolve_config(
        registry,
        record.qualified_name,
        params=record.params,
        dims=export_dims,
        dtype=record.dtype,
        seed=record.seed if record.seed is not None else 0,
        weights=source,
        weights_prefix=_recorded_prefix(record, source),
    )


def _recorded_prefix(
    record: ExportRecord, source: WeightsFile | None
) -> str | dict[str, str] | None:
    """The selection the file records, if ``source`` holds tensors under it.

    The same tensors saved on their own (no prefix, the layer's own names) are
    the same weights: the content hash, checked next, is what decides.
    """
    selection = record.selection
    if source is None or not selection:
        return None
    from layerport.errors import BadFile
    from layerport.weights import select_checkpoint

    prefixes = selection.values() if isinstance(selection, dict) else [selection]
    try:
        for prefix in prefixes:
            select_checkpoint(source, prefix)
    except BadFile:
        return None
    return selection

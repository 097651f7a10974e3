"""The layer-type spec: everything layerport needs to know about one layer type.

A plugin describes its layer type once, declaratively: typed parameters, named
inputs and outputs with named dims, which dims are dynamic, the weight tensors,
a builder, and comparison tolerances. Export, verification, benchmarking and the
conformance kit need nothing beyond what a spec declares.

This module does not import torch: ``layerport list`` and ``show`` read specs, and
only ``LayerSpec.build`` (called when a layer is instantiated) needs torch.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerport.dtypes import (
    DEFAULT_TOLERANCES,
    DTYPES,
    FLOAT,
    INTEGER_TYPES,
    QUANTIZATIONS,
    TENSOR_DTYPES,
    Tolerance,
)
from layerport.errors import InvalidDim, InvalidParameter, InvalidSpec, Setting, UserInputError
from layerport.runtime import RUNTIMES
from layerport.spec.expressions import FormulaError, evaluate, formula_names, parse_formula
from layerport.spec.forms import STANDARD, ExportForm

if TYPE_CHECKING:
    from torch import nn

ParamValue = int | float | bool | str
Params = Mapping[str, ParamValue]
Dims = Mapping[str, int]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LAYER_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}

# What a spec that declares no precisions supports, and the runtime that verifies each.
DEFAULT_PRECISIONS: Mapping[str, str] = {"float32": "onnxruntime", "float64": "onnxruntime"}
# Every precision, for layers made of MatMul, Gemm, Scan and elementwise ops.
# onnxruntime 1.32's CPU provider runs float16 (as storage: it casts to float32
# around each op) but has no bfloat16 Gemm or MatMul kernel, so onnx's
# reference evaluator verifies bfloat16 files.
ALL_PRECISIONS: Mapping[str, str] = {
    **DEFAULT_PRECISIONS,
    "float16": "onnxruntime",
    "bfloat16": "onnx-reference",
}


@dataclass(frozen=True)
class Param:
    """One typed layer parameter, with its default, its constraints and a help line."""

    name: str
    """The parameter's name, as ``-p NAME=VALUE`` sets it. Example: ``"hidden_size"``."""

    type: type
    """``int``, ``float``, ``bool`` or ``str``; command-line text is parsed to it. Example: ``int``."""

    default: ParamValue
    """The value when none is given; it must pass the constraints. Example: ``64``."""

    help: str
    """One line for ``show`` and errors. Example: ``"size of the hidden state"``."""

    choices: tuple[ParamValue, ...] | None = None
    """The only values allowed, if any. Example: ``("tanh", "relu")``."""

    minimum: int | float | None = None
    """The smallest value allowed, for numbers. Example: ``1``."""

    maximum: int | float | None = None
    """The largest value allowed, for numbers. Example: ``1e-1``."""

    def allowed(self) -> str:
        """Describe the values this parameter accepts, for help text and errors."""
        if self.choices is not None:
            return "one of " + ", ".join(_format_value(choice) for choice in self.choices)
        words = _TYPE_WORDS[self.type]
        if self.minimum is not None and self.maximum is not None:
            return f"{words} from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"{words} >= {self.minimum}"
        if self.maximum is not None:
            return f"{words} <= {self.maximum}"
        return words

    def parse(self, text: str) -> ParamValue:
        """Turn a command-line string into a checked value."""
        value: ParamValue
        try:
            if self.type is bool:
                lowered = text.strip().lower()
                if lowered not in _TRUE | _FALSE:
                    raise ValueError(text)
                value = lowered in _TRUE
            elif self.type is int:
                value = int(text.strip())
            elif self.type is float:
                value = float(text.strip())
            else:
                value = text
        except ValueError:
            raise self._invalid(repr(text)) from None
        return self.check(value)

    def check(self, value: object) -> ParamValue:
        """Check a Python value (from code or from a file's metadata) and return it."""
        if not _has_type(value, self.type):
            raise self._invalid(repr(value))
        assert isinstance(value, (int, float, bool, str))
        if self.type is float:
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise self._invalid(repr(value))
        if self.choices is not None and value not in self.choices:
            raise self._invalid(_format_value(value))
        out_of_range = (self.minimum is not None and value < self.minimum) or (  # type: ignore[operator]
            self.maximum is not None and value > self.maximum  # type: ignore[operator]
        )
        if out_of_range:
            raise self._invalid(_format_value(value))
        return value

    def _invalid(self, shown: str) -> InvalidParameter:
        suggestion = ""
        if self.choices is not None:
            # Stricter than for names: "gelu" is a different activation, not a typo of "relu".
            suggestion = _suggest(
                shown, [_format_value(choice) for choice in self.choices], cutoff=0.8
            )
        return InvalidParameter(
            f"parameter {self.name} must be {self.allowed()}, got {shown}{suggestion}"
        )


@dataclass(frozen=True)
class Dim:
    """A dynamic dim: its size is chosen per call, and the export keeps it symbolic.

    ``check_size`` is the larger size verification also tries, beyond the
    smallest size and the size the export was traced at. ``min_size`` is the
    smallest valid size: an integer, or a formula over the parameters (a
    ``Conv1d`` without padding needs ``dilation * (kernel_size - 1) + 1``).
    Smaller sizes are refused with the minimum and the formula, and the
    verification grid starts there instead of at 1.
    """

    name: str
    """The dim's name, as ``--dim NAME=SIZE`` sets it and the file's symbolic dim is called. Example: ``"seq"``."""

    default: int
    """The size the export is traced at, and ``run`` uses; at least 2 (torch.export specializes 1). Example: ``32``."""

    help: str = ""
    """One line for ``show``. Example: ``"time steps per sequence"``."""

    check_size: int | None = None
    """The larger size verification tries; default twice the traced size plus 5. Example: ``301``."""

    min_size: int | str = 1
    """The smallest valid size: an integer, or a formula over the parameters; 0 only for a state that may be empty (a KV cache's ``past``). Example: ``"dilation * (kernel_size - 1) + 1 - 2 * padding"``."""

    max_size: int | None = None
    """The largest valid size, if there is one: a model's declared maximum past. A file records it, and a runtime refuses a larger input. Example: ``2048``."""

    def smallest(self, params: Params) -> int:
        """The smallest valid size for these parameters: never below 1, unless declared 0."""
        if self.min_size == 0:
            return 0
        if isinstance(self.min_size, int):
            return max(1, self.min_size)
        values = {name: value for name, value in params.items() if isinstance(value, (int, bool))}
        return max(1, evaluate(parse_formula(self.min_size), values))

    def grid(self, export_size: int, smallest: int = 1) -> tuple[int, ...]:
        """The sizes verification runs at: the smallest, the traced size, and a larger one.

        The larger size is ``check_size`` when that is at least two above the
        traced size, else twice the traced size plus 5, so that a streamed
        sequence always splits into three chunks (1, traced, rest). It is never
        a multiple of the traced size, so an export that silently repeats or
        truncates a traced block cannot pass by coincidence.
        """
        if self.check_size is not None and self.check_size >= export_size + 2:
            larger = self.check_size
        else:
            larger = 2 * export_size + 5
        while export_size > 1 and larger % export_size == 0:
            larger += 1
        if self.max_size is not None:
            larger = min(larger, self.max_size)
        return tuple(sorted({smallest, export_size, larger}))


@dataclass(frozen=True)
class Tensor:
    """A named input or output, and its dims by name.

    Each dim is the name of a dynamic ``Dim``, the name of an integer parameter,
    a literal size written as digits, or a formula over the parameters, such as
    ``"num_layers * (2 if bidirectional else 1)"`` (see ``layerport.spec.expressions``).
    """

    name: str
    """The input's or output's name in the file, and the ``--input NAME=FILE`` key. Example: ``"h0"``."""

    dims: tuple[str, ...]
    """Each axis: a dynamic dim, an integer parameter, a literal, or a formula (an output's may use dynamic dims). Example: ``("batch", "seq", "input_size")``."""

    help: str = ""
    """One line for ``show``. Example: ``"initial hidden state; zeros if omitted"``."""

    optional: bool = False
    """An input that may be left out: ``None`` to the module, zeros to the file. Example: ``True``."""

    dtype: str = "float"
    """``float`` (the layer's precision, whichever it is exported in), ``int64``, ``int32`` or ``bool`` (a mask). Example: ``"int64"``."""

    high: int | str | None = None
    """An integer input's values lie from 0 up to this, exclusive: a size or a formula over the parameters; generated inputs stay below it and given ones are checked. Required for integer inputs. Example: ``"num_embeddings"``."""

    def is_float(self) -> bool:
        """Whether the tensor takes the layer's precision (not a fixed integer or boolean type)."""
        return self.dtype == FLOAT


@dataclass(frozen=True)
class Streaming:
    """How a layer processes a long sequence in chunks.

    Outputs that have ``dim`` are concatenated along it; each ``(input, output)``
    pair in ``carry`` feeds one chunk's output into the next chunk's input, as an
    RNN carries ``h_n`` into ``h0``, or an attention layer ``present_key`` into
    ``past_key`` (a state that ``grows``). ``unless`` names a boolean parameter that,
    when true, makes the layer unable to stream (``bidirectional``: the backward
    direction needs the whole sequence); verification then says it skipped the
    check.
    """

    dim: str
    """The dynamic dim a long sequence is cut along. Example: ``"seq"``."""

    carry: tuple[tuple[str, str], ...]
    """``(input, output)`` pairs: each chunk's output feeds the next chunk's input. Example: ``(("h0", "h_n"),)``."""

    unless: str | None = None
    """A boolean parameter under which the layer cannot stream, or ``"not NAME"`` for one it needs; verification says it skipped. Example: ``"bidirectional"``, ``"not causal"``."""

    grows: str | None = None
    """The dim the carried state grows along, by each chunk's length, as a KV cache's ``past`` does: a dim of smallest size 0, which the whole pass leaves empty. Each carried output's axis there is ``"GROWS + DIM"``. Verification then proves a prefill followed by single-token steps against the whole pass. Example: ``"past"``."""

    def applies(self, params: Params) -> bool:
        """Whether a layer with these parameters can stream."""
        if self.unless is None:
            return True
        name, blocking = self._unless()
        return params[name] != blocking

    def skipped_because(self) -> str:
        """Why a layer does not stream, when ``applies`` is false: ``a layer with causal=false``."""
        name, blocking = self._unless()
        return f"a layer with {name}={'true' if blocking else 'false'}"

    def _unless(self) -> tuple[str, bool]:
        """The parameter ``unless`` names, and the value under which the layer cannot stream."""
        assert self.unless is not None
        if self.unless.startswith("not "):
            return self.unless.removeprefix("not "), False
        return self.unless, True

    def recorded(self, params: Params) -> dict[str, Any] | None:
        """The stream as a file records it (``ExportRecord.streaming``) for a layer with these
        parameters, or ``None`` where it cannot stream."""
        if not self.applies(params):
            return None
        return {"dim": self.dim, "carry": [list(pair) for pair in self.carry], "grows": self.grows}

    @property
    def grown_dim(self) -> str | None:
        """A carried output's axis where the state grows by the chunk: ``"past + seq"``."""
        return None if self.grows is None else f"{self.grows} + {self.dim}"

    def carried_dims(self, state: Tensor) -> tuple[str, ...]:
        """The dims of the output that carries the input ``state``: its own, grown where it grows."""
        return tuple(
            self.grown_dim if dim == self.grows and self.grown_dim else dim for dim in state.dims
        )


@dataclass(frozen=True)
class WeightPart:
    """A torch module that holds some of a layer's weights, under its own key names.

    Training scripts save a layer's weights inside torch's own modules: the
    ``rnn``'s three matrices arrive as a one-layer ``nn.RNN`` and an ``nn.Linear``
    head, each under its own prefix of a whole-model checkpoint. ``keys`` maps the
    module's state-dict keys to the layer's weight names (``{"weight_ih_l0":
    "wi.weight", ...}``); ``--weights-prefix recurrence=rnn.`` then reads the part
    named ``recurrence`` from the tensors under ``rnn.``. A key the module does not
    hold (a bias, when the layer has none) is simply absent.
    """

    name: str
    """The part's name, as ``--weights-prefix NAME=PREFIX`` selects it. Example: ``"recurrence"``."""

    description: str
    """What torch module holds it, for ``show`` and advice. Example: ``"a one-layer torch.nn.RNN"``."""

    keys: Mapping[str, str]
    """The module's state-dict keys to the layer's weight names. Example: ``{"weight_ih_l0": "wi.weight"}``."""


@dataclass(frozen=True)
class LayerSpec:
    """Everything layerport knows about one layer type.

    ``build(params)`` returns the ``nn.Module``; its ``forward`` takes the inputs in
    the order declared (optional ones may be ``None``) and returns the outputs in
    the order declared. layerport seeds the weights, sets the dtype and eval mode.
    ``weights(params)`` gives the state-dict names and shapes without building.
    ``reference(module)``, if given, returns an independent, fastest-known eager
    implementation holding the module's weights, used by ``bench`` and the tests.
    ``flops(params, dims)``, if given, counts floating-point operations per call.
    ``batch_dim`` names the dynamic dim that counts independent samples, if the
    layer has one: bench reports samples per second by it, and serving with
    dynamic batching stacks requests along it.
    ``params_from_weights(shapes)``, if given, reads the parameters that weight
    shapes determine (``hidden_size``, ``num_layers``...) from a weights file's
    names and shapes, so ``--weights`` needs no ``-p``. Declared with a second
    argument, ``params_from_weights(shapes, params)``, it also sees the
    parameters set so far (defaults included), for a size the weights tell only
    together with a setting: a grouped convolution's weight holds
    ``in_channels // groups`` input channels.
    ``weight_parts``, if given, name the torch modules a checkpoint may hold the
    weights in (see ``WeightPart``), for layers whose weight names are not torch's.
    ``precisions`` maps each precision the layer supports to the runtime that
    verifies its exports: ``onnxruntime``, or ``onnx-reference`` (onnx's
    ``ReferenceEvaluator``) for a precision onnxruntime's CPU provider has no
    kernels for, such as bfloat16 ``MatMul``. Default: float32 and float64, in
    onnxruntime.
    """

    name: str
    """The layer type's name: lowercase letters, digits, ``_`` and ``-``. Example: ``"rnn"``."""

    description: str
    """One line for ``list`` and ``show``. Example: ``"Elman RNN over a sequence"``."""

    build: Callable[[Params], nn.Module]
    """``build(params)`` returns the ``nn.Module``; its ``forward`` takes the inputs and returns the outputs in declared order. Example: ``build_rnn``."""

    weights: Callable[[Params], Mapping[str, tuple[int, ...]]]
    """``weights(params)`` gives the state dict's names and shapes, without torch. Example: ``lambda p: {"scale": (p["features"],)}``."""

    inputs: tuple[Tensor, ...]
    """The inputs, in ``forward``'s order; the first cannot be optional. Example: ``(Tensor("x", ("batch", "features")),)``."""

    outputs: tuple[Tensor, ...]
    """The outputs, in the order ``forward`` returns them. Example: ``(Tensor("y", ("batch", "features")),)``."""

    params: tuple[Param, ...] = ()
    """The typed parameters. Example: ``(Param("features", int, 32, "width", minimum=1),)``."""

    dims: tuple[Dim, ...] = ()
    """The dynamic dims, symbolic in every export. Example: ``(Dim("batch", 8, "rows"),)``."""

    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    """Fixed verification tolerances by dtype or quantization (``int8``), for a layer that must be judged element by element; a float dtype left out is judged by the float64 verdict (``layerport.verify.verdict``), int8 and float64 by ``layerport.dtypes``' defaults. Example: ``{"float32": Tolerance(1e-4, 1e-3)}``."""

    streaming: Streaming | None = None
    """How a long sequence runs in chunks, if the layer can. Example: ``Streaming("seq", (("h0", "h_n"),))``."""

    reference: Callable[[nn.Module], Callable[..., Any]] | None = None
    """``reference(module)``: an independent, fastest-known eager implementation with the module's weights, for bench and tests. Example: ``rnn_reference``."""

    flops: Callable[[Params, Dims], int] | None = None
    """``flops(params, dims)``: floating-point operations per call, for bench's GFLOP/s. Example: ``lambda p, d: 2 * d["batch"] * p["features"]``."""

    batch_dim: str | None = None
    """The dynamic dim that counts independent samples (bench's samples/s, batching servers). Example: ``"batch"``."""

    params_from_weights: Callable[..., Params] | None = None
    """``params_from_weights(shapes)`` or ``(shapes, params)``: the parameters a weights file's names and shapes fix, so ``--weights`` needs no ``-p``. Example: ``torch_layout_sizes``."""

    weight_parts: tuple[WeightPart, ...] = ()
    """The torch modules a checkpoint may hold the weights in, under their own key names. Example: ``(WeightPart("head", "a torch.nn.Linear", {"weight": "wo.weight"}),)``."""

    precisions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PRECISIONS))
    """Each supported precision, and the runtime that verifies its files (``onnxruntime`` or ``onnx-reference``). Example: ``ALL_PRECISIONS``."""

    forms: tuple[ExportForm, ...] = ()
    """Other ways to export the layer, tried by ``export --optimize`` beside the standard one (see ``spec.forms``). Example: ``(FUSED,)``."""

    def __post_init__(self) -> None:
        _validate_spec(self)

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    def dim(self, name: str) -> Dim:
        for dim in self.dims:
            if dim.name == name:
                return dim
        raise KeyError(name)

    def input(self, name: str) -> Tensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    def implied_params(
        self, shapes: Mapping[str, tuple[int, ...]], params: Params
    ) -> Params | None:
        """``params_from_weights``' answer for ``shapes`` (given ``params`` if it takes them); ``None`` without one."""
        infer = self.params_from_weights
        if infer is None:
            return None
        if len(inspect.signature(infer).parameters) >= 2:
            return infer(shapes, params)
        return infer(shapes)

    def check_precision(self, dtype: str) -> None:
        """Raise ``UserInputError`` unless the layer supports ``dtype``, naming those it does."""
        if dtype not in self.precisions:
            raise UserInputError(
                f"layer {self.name!r} supports {', '.join(self.precisions)}, not {dtype}; "
                "choose one with ",
                Setting("dtype", next(iter(self.precisions))),
            )

    def resolve_params(self, given: Mapping[str, object] | None = None) -> dict[str, ParamValue]:
        """Defaults overlaid with ``given``; strings are parsed, every value is checked."""
        return resolve_values(self.params, given, "parameter", f"for layer {self.name!r}")

    def resolve_dims(
        self, given: Mapping[str, int] | None = None, params: Params | None = None
    ) -> dict[str, int]:
        """Default dynamic-dim sizes overlaid with ``given``, each checked.

        With ``params``, each size must also reach its dim's smallest size.
        """
        resolved = {dim.name: dim.default for dim in self.dims}
        for name, size in (given or {}).items():
            if name not in resolved:
                raise self._unknown_dim(name)
            least = 0 if self.dim(name).min_size == 0 else 1
            if isinstance(size, bool) or not isinstance(size, int) or size < least:
                raise InvalidDim(f"dim {name} must be an integer >= {least}, got {size!r}")
            resolved[name] = size
        if params is not None:
            self.check_dims(resolved, params)
        return resolved

    def check_dims(self, dims: Dims, params: Params) -> None:
        """Raise ``InvalidDim`` for a size below its dim's smallest, naming the minimum and why,
        or above its declared largest."""
        for dim in self.dims:
            if dim.max_size is not None and dims.get(dim.name, 0) > dim.max_size:
                raise InvalidDim(
                    f"dim {dim.name} of layer {self.name!r} must be at most {dim.max_size} (its "
                    f"declared maximum), got {dims[dim.name]}"
                )
            smallest = dim.smallest(params)
            if dim.name in dims and dims[dim.name] < smallest:
                raise InvalidDim(
                    f"dim {dim.name} of layer {self.name!r} must be at least {smallest}, got "
                    f"{dims[dim.name]}{_why_smallest(dim, params)}; set it with ",
                    Setting("dims", f"{dim.name}={smallest}"),
                )

    def derived_axes(self, tensor: Tensor) -> dict[int, str]:
        """Axis index -> formula, for the axes of ``tensor`` derived from dynamic dims."""
        dynamic = {dim.name for dim in self.dims}
        derived = {}
        for axis, text in enumerate(tensor.dims):
            if text not in dynamic and not text.isdigit() and not text.isidentifier():
                names, _ = formula_names(parse_formula(text))
                if names & dynamic:
                    derived[axis] = text
        return derived

    def _unknown_dim(self, name: str) -> InvalidDim:
        dynamic = ", ".join(dim.name for dim in self.dims) or "(none)"
        if any(param.name == name for param in self.params):
            return InvalidDim(
                f"dim {name!r} of layer {self.name!r} is fixed by a parameter; set it with ",
                Setting("params", f"{name}=SIZE"),
                f" (dynamic dims: {dynamic})",
            )
        known = [dim.name for dim in self.dims]
        return InvalidDim(
            f"unknown dim {name!r} for layer {self.name!r}{_suggest(name, known)}; dynamic dims: {dynamic}"
        )

    def tensor_dtype(self, tensor: Tensor, dtype: str) -> str:
        """The element type of ``tensor`` in a layer of precision ``dtype``: ``int64`` stays ``int64``."""
        return dtype if tensor.is_float() else tensor.dtype

    def value_range(self, tensor: Tensor, params: Params) -> tuple[int, int] | None:
        """``(0, high)``: the values an integer tensor may hold (``high`` exclusive), else ``None``."""
        if tensor.high is None:
            return None
        return (0, _dim_size(str(tensor.high), params, {}))

    def shape(self, tensor: Tensor, params: Params, dims: Dims) -> tuple[int, ...]:
        """The concrete shape of ``tensor`` for these parameters and dim sizes."""
        return tuple(_dim_size(dim, params, dims) for dim in tensor.dims)

    def possible_weights(self, params: Params) -> dict[str, tuple[int, ...]]:
        """Every weight a file may hold for this layer, by name, with a shape of its rank.

        ``weights(params)`` names the weights of one configuration; a file read
        before its sizes are known (``params_from_weights``) may hold others: a
        second layer's ``weight_ih_l1``, a projection's ``weight_hr_l0``. So the
        names of the configurations one parameter away count too (each flag
        flipped, each integer one larger), and a name's digits stand for any
        index (``weight_ih_l#``). A configuration ``weights`` refuses is skipped.
        """
        variants: list[Params] = [params]
        for param in self.params:
            value = params.get(param.name, param.default)
            if param.type is bool:
                variants.append({**params, param.name: not value})
            elif param.type is int and isinstance(value, int):
                variants.append({**params, param.name: value + 1})
        possible: dict[str, tuple[int, ...]] = {}
        for variant in variants:
            try:
                shapes = self.weights(variant)
            except Exception:  # a variant the plugin refuses names no weights
                continue
            for name, shape in shapes.items():
                possible.setdefault(name, tuple(shape))
                possible.setdefault(_index_pattern(name), tuple(shape))
        return possible

    def tolerance(self, dtype: str) -> Tolerance:
        """The tolerance for a dtype's exports, or for a quantization recipe's (``int8``)."""
        return self.tolerances.get(dtype, DEFAULT_TOLERANCES[dtype])

    def dynamic_axes(self, tensor: Tensor) -> dict[int, str]:
        """Axis index -> dim name, for the axes of ``tensor`` that are dynamic."""
        dynamic = {dim.name for dim in self.dims}
        return {axis: name for axis, name in enumerate(tensor.dims) if name in dynamic}


def resolve_values(
    params: tuple[Param, ...], given: Mapping[str, object] | None, kind: str, owner: str
) -> dict[str, ParamValue]:
    """``params``' defaults overlaid with ``given``; strings are parsed, every value checked.

    ``kind`` and ``owner`` word an undeclared name: "unknown parameter 'x' for layer 'rnn'".
    """
    known = {param.name: param for param in params}
    resolved = {param.name: param.default for param in params}
    for name, value in (given or {}).items():
        if name not in known:
            raise InvalidParameter(
                f"unknown {kind} {name!r} {owner}{_suggest(name, known)}; "
                f"{kind}s: {', '.join(known) or '(none)'}"
            )
        param = known[name]
        resolved[name] = param.parse(value) if isinstance(value, str) else param.check(value)
    return resolved


def possible_shape(possible: Mapping[str, tuple[int, ...]], name: str) -> tuple[int, ...] | None:
    """The shape ``LayerSpec.possible_weights`` gives ``name``; ``None`` for a name it does not know."""
    return possible.get(name, possible.get(_index_pattern(name)))


def _index_pattern(name: str) -> str:
    """``weight_ih_l#`` for ``weight_ih_l3``: layers and directions repeat one weight's rank."""
    return re.sub(r"\d+", "#", name)


def _why_smallest(dim: Dim, params: Params) -> str:
    """`` (its smallest size is dilation * (kernel_size - 1) + 1, with kernel_size=3...)``."""
    if isinstance(dim.min_size, int):
        return ""
    names, _ = formula_names(parse_formula(dim.min_size))
    used = ", ".join(f"{name}={_format_value(params[name])}" for name in sorted(names))
    return f" (its smallest size is {dim.min_size}, with {used})"


def _dim_size(dim: str, params: Params, dims: Dims) -> int:
    if dim.isdigit():
        return int(dim)
    if dim in dims:
        return dims[dim]
    if dim in params:
        return int(params[dim])
    values: dict[str, int | bool] = {
        name: value for name, value in params.items() if isinstance(value, (int, bool))
    }
    values.update(dims)
    return evaluate(parse_formula(dim), values)


def _has_type(value: object, expected: type) -> bool:
    # bool is a subclass of int, but True is not a size and 1 is not a flag.
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, expected) and not isinstance(value, bool)


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _suggest(name: str, candidates: list[str] | Mapping[str, object], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _validate_spec(spec: LayerSpec) -> None:
    """Refuse an inconsistent spec at registration, not at the user's first run."""

    def fail(message: str) -> None:
        raise InvalidSpec(f"layer spec {spec.name!r}: {message}")

    if not isinstance(spec.name, str) or not _LAYER_NAME.match(spec.name):
        fail("name must be lowercase letters, digits, '_' or '-', starting with a letter")
    if not spec.description or "\n" in spec.description:
        fail("description must be one non-empty line")
    for attribute in ("build", "weights"):
        if not callable(getattr(spec, attribute)):
            fail(f"{attribute} must be callable")
    param_names = [param.name for param in spec.params]
    dim_names = [dim.name for dim in spec.dims]
    tensor_names = [tensor.name for tensor in spec.inputs + spec.outputs]
    for kind, names in (("parameter", param_names), ("dim", dim_names), ("tensor", tensor_names)):
        for name in names:
            if not isinstance(name, str) or not _NAME.match(name):
                fail(f"{kind} name {name!r} must be a lowercase identifier")
        if len(set(names)) != len(names):
            fail(f"{kind} names must be unique, got {names}")
    form_names = [form.name for form in spec.forms]
    if len(set(form_names)) != len(form_names) or STANDARD in form_names:
        fail(f"form names must be unique and not {STANDARD!r}, got {form_names}")
    if set(param_names) & set(dim_names):
        fail(f"names used both as parameter and dim: {sorted(set(param_names) & set(dim_names))}")
    for param in spec.params:
        if param.type not in _TYPE_WORDS:
            fail(f"parameter {param.name}: type must be int, float, bool or str")
        try:
            param.check(param.default)
        except InvalidParameter as error:
            fail(f"default is invalid: {error}")
    for dim in spec.dims:
        if not isinstance(dim.default, int) or isinstance(dim.default, bool) or dim.default < 2:
            # torch.export specializes size-1 dims, so a dynamic dim must trace at >= 2.
            fail(f"dim {dim.name}: default size must be an integer >= 2")
    if not spec.inputs or not spec.outputs:
        fail("a layer needs at least one input and one output")
    int_params = {param.name for param in spec.params if param.type is int}
    # An integer parameter may be an 'if' test too: torch's proj_size=0 means none.
    flag_params = {param.name for param in spec.params if param.type in (bool, int)}
    for tensor in spec.inputs + spec.outputs:
        # An output's size may follow from an input's: a convolution's length.
        numbers = int_params | set(dim_names) if tensor in spec.outputs else int_params
        for dim_name in tensor.dims:
            if dim_name.isdigit() or dim_name in dim_names or dim_name in int_params:
                continue
            problem = _formula_problem(dim_name, numbers, flag_params)
            if problem and tensor in spec.inputs and set(dim_names) & _names_in(dim_name):
                problem = "uses a dynamic dim; only an output's dims may be derived from them"
            if problem:
                fail(f"tensor {tensor.name}: dim {dim_name!r} {problem}")
    for dim in spec.dims:
        if isinstance(dim.min_size, bool) or not isinstance(dim.min_size, (int, str)):
            fail(f"dim {dim.name}: min_size must be an integer or a formula over the parameters")
        elif isinstance(dim.min_size, str):
            problem = _formula_problem(dim.min_size, int_params, flag_params)
            if problem:
                fail(f"dim {dim.name}: min_size {dim.min_size!r} {problem}")
        try:
            smallest = dim.smallest(spec.resolve_params())
        except (FormulaError, ZeroDivisionError, KeyError):
            continue  # reported above
        if dim.default < smallest:
            fail(f"dim {dim.name}: default size {dim.default} is below its min_size {smallest}")
    for tensor in spec.inputs + spec.outputs:
        _validate_tensor_dtype(tensor, tensor in spec.inputs, int_params, flag_params, fail)
    if any(output.optional for output in spec.outputs):
        fail("only inputs can be optional")
    if spec.inputs[0].optional:
        fail("the first input cannot be optional")
    for dtype in spec.tolerances:
        if dtype not in DTYPES + QUANTIZATIONS:
            fail(
                f"tolerances: unknown dtype {dtype!r}; dtypes: {', '.join(DTYPES + QUANTIZATIONS)}"
            )
    if spec.batch_dim is not None and spec.batch_dim not in dim_names:
        fail(f"batch_dim {spec.batch_dim!r} is not a dynamic dim; dims: {', '.join(dim_names)}")
    if spec.streaming is not None:
        _validate_streaming(spec, fail)
    _validate_weight_parts(spec, fail)
    if not spec.precisions:
        fail("precisions must name at least one precision")
    for dtype, runtime in spec.precisions.items():
        if dtype not in DTYPES:
            fail(f"precisions: unknown dtype {dtype!r}; dtypes: {', '.join(DTYPES)}")
        if runtime not in RUNTIMES:
            fail(f"precisions: {dtype} names runtime {runtime!r}; runtimes: {', '.join(RUNTIMES)}")


def _validate_tensor_dtype(
    tensor: Tensor,
    is_input: bool,
    int_params: set[str],
    flag_params: set[str],
    fail: Callable[[str], None],
) -> None:
    """A tensor's dtype is known, and an integer input says which values are valid."""
    if tensor.dtype not in TENSOR_DTYPES:
        fail(
            f"tensor {tensor.name}: dtype {tensor.dtype!r} must be one of {', '.join(TENSOR_DTYPES)}"
        )
    if tensor.dtype not in INTEGER_TYPES:
        if tensor.high is not None:
            fail(f"tensor {tensor.name}: only an integer tensor has a high bound")
        return
    if tensor.high is None:
        if is_input:
            # Random integers are rarely valid ids: the spec must say which are.
            fail(f"tensor {tensor.name}: an integer input must declare high, its values' bound")
        return
    if isinstance(tensor.high, bool) or not isinstance(tensor.high, (int, str)):
        fail(f"tensor {tensor.name}: high must be an integer or a formula over the parameters")
    elif isinstance(tensor.high, int):
        if tensor.high < 1:
            fail(f"tensor {tensor.name}: high must be at least 1, got {tensor.high}")
    elif not tensor.high.isdigit() and tensor.high not in int_params:
        problem = _formula_problem(tensor.high, int_params, flag_params)
        if problem:
            fail(f"tensor {tensor.name}: high {tensor.high!r} {problem}")


def _validate_weight_parts(spec: LayerSpec, fail: Callable[[str], None]) -> None:
    part_names = [part.name for part in spec.weight_parts]
    if len(set(part_names)) != len(part_names):
        fail(f"weight part names must be unique, got {part_names}")
    targets: list[str] = []
    for part in spec.weight_parts:
        if not isinstance(part.name, str) or not _NAME.match(part.name):
            fail(f"weight part name {part.name!r} must be a lowercase identifier")
        if not part.keys or not all(
            isinstance(key, str) and isinstance(name, str) for key, name in part.keys.items()
        ):
            fail(f"weight part {part.name}: keys must map torch's key names to weight names")
        targets += part.keys.values()
    if len(set(targets)) != len(targets):
        fail("weight parts: each of the layer's weights may come from one part only")


def _names_in(text: str) -> set[str]:
    try:
        return formula_names(parse_formula(text))[0]
    except FormulaError:
        return set()


def _formula_problem(text: str, numbers: set[str], flags: set[str]) -> str | None:
    """Why ``text`` is not a dim formula over these parameters, or ``None``."""
    if text.isidentifier():
        return "is neither a dynamic dim, an integer parameter nor a literal size"
    try:
        names, used_as_flags = formula_names(parse_formula(text))
    except FormulaError as error:
        return f"is not a valid formula: {error}"
    unknown = sorted(names - numbers - flags)
    if unknown:
        return (
            f"uses {unknown[0]!r}, which is not an integer or boolean parameter "
            "(a formula may use parameters only)"
        )
    not_flags = sorted(used_as_flags - flags)
    if not_flags:
        return f"tests {not_flags[0]!r} with 'if', which is not a boolean or integer parameter"
    return None


def _validate_streaming(spec: LayerSpec, fail: Callable[[str], None]) -> None:
    assert spec.streaming is not None
    if spec.streaming.dim not in {dim.name for dim in spec.dims}:
        fail(f"streaming dim {spec.streaming.dim!r} is not a dynamic dim")
    unless = spec.streaming.unless
    flags = {p.name for p in spec.params if p.type is bool}
    if unless is not None and unless.removeprefix("not ") not in flags:
        fail(f"streaming unless={unless!r} is not a boolean parameter")
    inputs = {tensor.name: tensor for tensor in spec.inputs}
    outputs = {tensor.name: tensor for tensor in spec.outputs}
    grows = spec.streaming.grows
    if grows is not None and not any(d.name == grows and d.min_size == 0 for d in spec.dims):
        fail(f"streaming grows along {grows!r}, which must be a dynamic dim with min_size 0")
    for input_name, output_name in spec.streaming.carry:
        if input_name not in inputs or output_name not in outputs:
            fail(f"streaming carries {output_name!r} into {input_name!r}, which must both exist")
        elif spec.streaming.carried_dims(inputs[input_name]) != outputs[output_name].dims:
            fail(f"streaming: {output_name} must have {input_name}'s dims, grown where it grows")

"""A model file's layers composed into one layer: wiring, shapes, dtypes and weights.

A composed model is exported, verified, run, served and benchmarked exactly as
a registered layer is, because it *is* one: ``resolve_model_config`` builds a
``LayerSpec`` whose inputs and outputs are the model's, whose weights are every
layer's under the layer's name (``encoder.weight_ih_l0``), and whose module runs
the layers in order (``layerport.model.module``). Everything downstream, from
torch.onnx to the verification grid and the file's record, needs nothing new.

The shapes are checked here, before anything is built: each layer's input
dims are bound to what feeds them (a dynamic dim of the model, a size, or a
formula such as a convolution's output length), fixed sizes must agree, and
each output's dims become formulas over the model's own dims. So a wrong
``input_size``, a rank that does not fit or an int64 id fed to a float layer
is refused with the model file's line and key, and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from layerport.config import LayerConfig, check_memory, resolve_config
from layerport.dtypes import DEFAULT_DTYPE, FLOAT
from layerport.errors import InvalidModel, InvalidParameter, Setting, UserInputError
from layerport.model.definition import ModelDefinition, ModelLayer
from layerport.registry import PluginInfo, RegisteredLayer, Registry
from layerport.spec import Dim, LayerSpec, Params, Streaming, Tensor
from layerport.spec.expressions import evaluate, formula_names, parse_formula, substituted
from layerport.spec.forms import composed_forms
from layerport.weights import is_prefix_note

if TYPE_CHECKING:
    from pathlib import Path

    from layerport.weights import WeightsFile, WeightsPrefix

MODEL_PLUGIN = "model"
# A model dim no layer names directly (only a formula of it) is traced at this size.
_DEFAULT_SIZE = 8


@dataclass(frozen=True)
class Step:
    """One layer of a composed model: its configuration and what feeds each of its inputs.

    ``sources`` holds, per input of the layer's spec in order, the value that
    feeds it: a model input's name or ``LAYER.OUTPUT``; ``None`` leaves an
    optional input out.
    """

    name: str
    config: LayerConfig
    sources: tuple[str | None, ...]
    lead: tuple[str, ...] = ()
    """The leading dims of what feeds the layer, folded into its batch dim (``_lead``); empty if none."""
    exposed: tuple[str, ...] = ()
    """The layer's carried-state inputs fed by model inputs of their own (``state_name``):
    a KV cache no layer of the model makes."""

    def values(self) -> list[str]:
        """The names of the values this layer's outputs become: ``LAYER.OUTPUT``."""
        return [f"{self.name}.{tensor.name}" for tensor in self.config.spec.outputs]

    def state_pairs(self) -> list[tuple[str, str, str]]:
        """``(model input, model output, value)`` for each exposed state, as the layer's
        ``Streaming.carry`` pairs them: ``block0_past_key`` in, ``block0_present_key``
        out, which is the value ``block0.present_key``."""
        streaming = self.config.spec.streaming
        assert streaming is not None or not self.exposed
        return [
            (state_name(self.name, given), state_name(self.name, made), f"{self.name}.{made}")
            for given, made in (streaming.carry if streaming else ())
            if given in self.exposed
        ]


def state_name(layer: str, tensor: str) -> str:
    """The model input or output that carries a layer's state: ``block0_past_key``."""
    return f"{layer}_{tensor}"


@dataclass(frozen=True)
class _Value:
    """A value flowing between layers: its dims as formulas over the model's dims, its dtype."""

    dims: tuple[str, ...]
    dtype: str  # FLOAT (the model's precision) or a fixed type


def resolve_model_config(
    registry: Registry,
    definition: ModelDefinition,
    *,
    params: Mapping[str, object] | None = None,
    dims: Mapping[str, int] | None = None,
    dtype: str | None = None,
    seed: int = 0,
    weights: Path | WeightsFile | None = None,
    weights_prefix: WeightsPrefix | None = None,
) -> LayerConfig:
    """The configuration of a composed model, checked as ``resolve_config`` checks a layer's.

    ``weights`` is the checkpoint every layer's ``weights`` entry selects from,
    read once. ``dtype`` ``None`` means the checkpoint's own, or float32.
    Raises ``InvalidModel`` (exit 2) naming the model file's line and key for a
    layer that is unknown, fed from nowhere or from a later layer (a cycle), or
    fed a shape or dtype it does not take; the errors ``resolve_config`` raises
    for each layer are reworded to name the layer.
    """
    if params:
        raise InvalidParameter(
            "a model's parameters are set in its model file, under each layer's params; drop ",
            Setting("params"),
        )
    if weights_prefix is not None:
        raise UserInputError(
            "a model file selects each layer's tensors with its weights key; drop ",
            Setting("weights_prefix"),
        )
    source = _read_once(weights)
    configs = [
        _layer_config(registry, definition, index, layer, dtype, seed, source)
        for index, layer in enumerate(definition.layers)
    ]
    if dtype is None:
        # One precision for the whole model: the checkpoint's, as for a layer.
        chosen = next((c.dtype for c in configs if c.weights_dtype is not None), DEFAULT_DTYPE)
        configs = [
            config
            if config.dtype == chosen
            else _layer_config(registry, definition, index, layer, chosen, seed, source)
            for index, (layer, config) in enumerate(zip(definition.layers, configs, strict=True))
        ]
    chosen_dtype = configs[0].dtype

    def refit(step: Step, sizes: Mapping[str, int]) -> Step:
        index = _index(definition, step.name)
        layer = definition.layers[index]
        given = dataclasses.replace(layer, params={**layer.params, **sizes})
        config = _layer_config(registry, definition, index, given, chosen_dtype, seed, source)
        return dataclasses.replace(step, config=config)

    spec, steps = _composite_spec(definition, _order(definition, _wire(definition, configs)), refit)
    layer = RegisteredLayer(spec, PluginInfo(MODEL_PLUGIN, _version()))
    layer.spec.check_precision(chosen_dtype)
    checkpoint = _union_checkpoint(steps, source)
    config = LayerConfig(
        layer=layer,
        params={},
        dims=spec.resolve_dims(dims, {}),
        dtype=chosen_dtype,
        seed=seed,
        weights=None if source is None else source.path,
        weights_dtype=next((c.weights_dtype for c in configs if c.weights_dtype), None),
        notes=_notes(steps)
        + (
            ()
            if source is not None
            else (
                "no weights file given: every layer has seeded random weights, at the sizes "
                "its params give",
            )
        ),
        underflow=tuple(f"{s.name}.{words}" for s in steps for words in s.config.underflow),
        checkpoint=checkpoint,
        model=definition,
    )
    check_memory(config)
    return config


def _notes(steps: list[Step]) -> tuple[str, ...]:
    """Each layer's notes, named by layer; a note every layer's selection gives (the
    checkpoint's wrapper entry) is said once. That a layer's prefix was stripped goes
    unsaid: the model file says it, in the layer's weights key."""
    said = {
        step.name: [note for note in dict.fromkeys(step.config.notes) if not is_prefix_note(note)]
        for step in steps
    }
    counts = Counter(note for notes in said.values() for note in notes)
    shared = [note for note, count in counts.items() if count > 1]
    return tuple(shared) + tuple(
        f"layer {name}: {note}"
        for name, notes in said.items()
        for note in notes
        if note not in shared
    )


def _read_once(weights: Path | WeightsFile | None) -> WeightsFile | None:
    if weights is None:
        return None
    from layerport.weights import WeightsFile, read_weights_file

    return weights if isinstance(weights, WeightsFile) else read_weights_file(weights)


def _version() -> str:
    from importlib.metadata import version

    return version("layerport")


def _layer_config(
    registry: Registry,
    definition: ModelDefinition,
    index: int,
    layer: ModelLayer,
    dtype: str | None,
    seed: int,
    source: WeightsFile | None,
) -> LayerConfig:
    """One layer's configuration, with its tensors selected as its ``weights`` entry says."""
    try:
        registered = registry.resolve(layer.use)
        view, prefix = _layer_weights(definition, index, layer, registered, source)
        config = resolve_config(
            registry,
            layer.use,
            params=layer.params,
            dtype=dtype,
            seed=(seed + index) % 2**63,
            weights=view,
            weights_prefix=prefix,
        )
    except InvalidModel:
        raise
    except UserInputError as error:
        key = "use" if error.__class__.__name__ in ("UnknownLayer", "AmbiguousLayer") else None
        key = key or ("params" if isinstance(error, InvalidParameter) else "weights")
        raise InvalidModel(
            f"{definition.where(index, key)}: ", *map(_in_model_file, error.parts)
        ) from error
    if source is not None and view is None and config.weight_shapes():
        raise InvalidModel(
            f"{definition.where(index)}: layer {layer.use} has weights, and the model file does "
            'not say where they are in the checkpoint: add weights = "PREFIX." (or a table '
            "of weight name = checkpoint key)"
        )
    return config


def _in_model_file(part: str | Setting) -> str | Setting:
    """Advice worded for a model file: a layer there selects its tensors with its ``weights``
    key, not with the single-layer commands' prefix setting."""
    if not isinstance(part, Setting) or part.name != "weights_prefix":
        return part
    examples = part.examples()
    if all("=" in example for example in examples):  # weight parts: PART=PREFIX each
        pairs = (example.split("=", 1) for example in examples)
        table = ", ".join(f"{name} = {json.dumps(prefix)}" for name, prefix in pairs)
        return f"weights = {{ {table} }} on this layer"
    return f"weights = {json.dumps(part.example)} on this layer"


def _layer_weights(
    definition: ModelDefinition,
    index: int,
    layer: ModelLayer,
    registered: RegisteredLayer,
    source: WeightsFile | None,
) -> tuple[WeightsFile | None, WeightsPrefix | None]:
    """The weights file a layer reads, and the prefix (or weight parts' prefixes) it selects.

    A table whose keys are the layer's weight parts maps each part to a prefix;
    any other table maps each of the layer's weight names to a checkpoint key,
    for checkpoints whose names are not torch's (``fc_w``).
    """
    if source is None or layer.weights is None:
        return None, None
    if isinstance(layer.weights, str):
        return source, layer.weights or None
    parts = {part.name for part in registered.spec.weight_parts}
    if parts and set(layer.weights) <= parts:
        return source, dict(layer.weights)
    from layerport.weights import WeightsFile, keyed_checkpoint

    tensors = keyed_checkpoint(source, layer.weights).tensors
    return WeightsFile(source.path, tensors), None


def _wire(definition: ModelDefinition, configs: list[LayerConfig]) -> list[Step]:
    """Each layer's inputs' sources, in file order: named, or the previous layer's first output."""
    inputs = {entry.name for entry in definition.inputs}
    layers = {layer.name: config for layer, config in zip(definition.layers, configs, strict=True)}
    steps = []
    previous: str | None = definition.inputs[0].name
    for index, (layer, config) in enumerate(zip(definition.layers, configs, strict=True)):
        spec = config.spec
        given = layer.input if isinstance(layer.input, dict) else {}
        if isinstance(layer.input, str):
            given = {spec.inputs[0].name: layer.input}
        for name in given:
            if name not in {tensor.name for tensor in spec.inputs}:
                raise InvalidModel(
                    f"{definition.where(index, 'input')}: layer {spec.name} has no input {name!r}; "
                    f"its inputs: {', '.join(t.name for t in spec.inputs)}"
                )
        sources: list[str | None] = []
        exposed: list[str] = []
        carried = {name for name, _ in spec.streaming.carry} if spec.streaming else set()
        for position, tensor in enumerate(spec.inputs):
            text = given.get(tensor.name, previous if position == 0 else None)
            if text is None and tensor.name in carried and not tensor.optional:
                # A KV cache: the model takes it in and gives it back, one per layer, so
                # one file serves the prefill and every decode step, as the layer does.
                sources.append(state_name(layer.name, tensor.name))
                exposed.append(tensor.name)
                continue
            if text is None:
                if not tensor.optional:
                    raise InvalidModel(
                        f"{definition.where(index, 'input')}: input {tensor.name} of layer "
                        f"{spec.name} is required; feed it with input = {{ {tensor.name} = "
                        '"SOURCE" }'
                    )
                sources.append(None)
                continue
            sources.append(_resolve_source(definition, index, text, inputs, layers))
        steps.append(Step(layer.name, config, tuple(sources), exposed=tuple(exposed)))
        previous = f"{layer.name}.{spec.outputs[0].name}"
    return steps


def _resolve_source(
    definition: ModelDefinition,
    index: int,
    text: str,
    inputs: set[str],
    layers: Mapping[str, LayerConfig],
) -> str:
    """``ids`` (a model input), ``embed`` (its first output) or ``embed.y``, as a value's name."""
    if text in inputs:
        return text
    name, _, output = text.partition(".")
    if name not in layers:
        known = sorted(inputs | set(layers))
        raise InvalidModel(
            f"{definition.where(index, 'input')}: {text!r} names no input or layer; "
            f"known: {', '.join(known)}"
        )
    outputs = [tensor.name for tensor in layers[name].spec.outputs]
    if not output:
        return f"{name}.{outputs[0]}"
    if output not in outputs:
        raise InvalidModel(
            f"{definition.where(index, 'input')}: layer {name} has no output {output!r}; "
            f"its outputs: {', '.join(outputs)}"
        )
    return text


def _order(definition: ModelDefinition, steps: list[Step]) -> list[Step]:
    """The steps in an order where every layer runs after those that feed it.

    File order, unless a layer names a later one as its input; a cycle is refused,
    naming the layers on it.
    """
    producer = {value: step.name for step in steps for value in step.values()}
    states = {name for step in steps for name, _, _ in step.state_pairs()}
    needs = {
        step.name: {
            producer[s] for s in step.sources if s is not None and s in producer and s not in states
        }
        for step in steps
    }
    ordered: list[Step] = []
    done: set[str] = set()
    while len(ordered) < len(steps):
        ready = [s for s in steps if s.name not in done and needs[s.name] <= done]
        if not ready:
            waiting = [s.name for s in steps if s.name not in done]
            cycle = _cycle(needs, waiting[0])
            index = [layer.name for layer in definition.layers].index(cycle[0])
            raise InvalidModel(
                f"{definition.where(index, 'input')}: the layers {' -> '.join(cycle)} feed "
                "each other in a cycle"
            )
        ordered.append(ready[0])
        done.add(ready[0].name)
    return ordered


def _cycle(needs: Mapping[str, set[str]], start: str) -> list[str]:
    """A cycle through the dependency graph, found by following the first need from ``start``."""
    path = [start]
    while True:
        following = sorted(needs[path[-1]])[0]
        if following in path:
            return [*path[path.index(following) :], following]
        path.append(following)


def _composite_spec(
    definition: ModelDefinition,
    ordered: list[Step],
    refit: Callable[[Step, Mapping[str, int]], Step],
) -> tuple[LayerSpec, list[Step]]:
    """The model as one layer spec (its inputs, outputs, dims, weights and builder), and
    its steps, each refitted to the sizes its inputs tell (``_sizes_from_inputs``)."""
    values: dict[str, _Value] = {
        entry.name: _Value(tuple(str(dim) for dim in entry.shape), entry.dtype)
        for entry in definition.inputs
    }
    bindings: dict[str, dict[str, str]] = {}
    steps = []
    model_dims = list(
        dict.fromkeys(d for e in definition.inputs for d in e.shape if isinstance(d, str))
    )
    for step in ordered:
        step = dataclasses.replace(step, lead=_lead(_without_states(step), values))
        sizes = _sizes_from_inputs(definition, _without_states(step), values)
        if sizes:
            step = refit(step, sizes)
        for name, state in _state_values(definition, step, values).items():
            values[name] = state
            model_dims += [d for d in state.dims if d not in model_dims and not _is_constant(d)]
        steps.append(step)
        bindings[step.name] = _bind_inputs(definition, step, values)
        for tensor, value in zip(step.config.spec.outputs, step.values(), strict=True):
            values[value] = _output_value(definition, step, tensor, bindings[step.name])
    for declared in definition.dims:
        if declared.name not in model_dims:
            raise InvalidModel(
                f"{definition.where(key=f'dims.{declared.name}')}: the model has no dim "
                f"{declared.name}; its dims: {', '.join(model_dims)}"
            )
    dims = tuple(
        _model_dim(definition, name, model_dims, steps, bindings, values) for name in model_dims
    )
    states = [state for step in steps for state in step.state_pairs()]
    outputs = _outputs(definition, steps, values)
    taken = {entry.name for entry in definition.inputs} | {name for name, _ in outputs}
    for given, made, carried in states:
        for name in (given, made):
            if name in taken:
                raise InvalidModel(
                    f"{definition.where()}: {name} is the name of the state layer "
                    f"{carried.partition('.')[0]} carries, and of an input or output; rename it"
                )
    outputs += [(made, carried) for _, made, carried in states]
    inputs = tuple(_model_input(definition, entry, steps) for entry in definition.inputs)
    inputs += tuple(
        Tensor(given, values[given].dims, f"the state {carried} gives back")
        for given, _, carried in states
    )
    shapes = {
        f"{step.name}.{name}": tuple(shape)
        for step in steps
        for name, shape in step.config.weight_shapes().items()
    }
    build = Builder(
        tuple(steps),
        tuple(tensor.name for tensor in inputs),
        tuple(source for _, source in outputs),
        {name: value.dims for name, value in values.items()},
    )

    def flops(params: Params, sizes: Mapping[str, int]) -> int:
        total = 0
        for step in steps:
            spec = step.config.spec
            assert spec.flops is not None
            at = {name: _size(text, sizes) for name, text in bindings[step.name].items()}
            total += spec.flops(step.config.params, {**step.config.dims, **at})
        return total

    spec = LayerSpec(
        name=definition.name,
        description=definition.description
        or f"model file {definition.source}: {' -> '.join(step.name for step in steps)}",
        build=build,
        weights=lambda params: dict(shapes),
        inputs=inputs,
        outputs=tuple(
            Tensor(name, values[source].dims, f"{source}", dtype=values[source].dtype)
            for name, source in outputs
        ),
        dims=dims,
        flops=flops if all(step.config.spec.flops for step in steps) else None,
        batch_dim=_batch_dim(steps, bindings, {dim.name for dim in dims}),
        precisions=_precisions(steps),
        streaming=_streaming(steps, bindings, [(given, made) for given, made, _ in states]),
        forms=composed_forms([(step.name, step.config.params, step.config.spec) for step in steps]),
    )
    return spec, steps


def _without_states(step: Step) -> Step:
    """The step as its wired inputs alone feed it: its exposed states left out."""
    spec = step.config.spec
    sources = tuple(
        None if tensor.name in step.exposed else source
        for tensor, source in zip(spec.inputs, step.sources, strict=True)
    )
    return dataclasses.replace(step, sources=sources)


def _state_values(
    definition: ModelDefinition, step: Step, values: Mapping[str, _Value]
) -> dict[str, _Value]:
    """The model inputs that feed a layer's exposed states, with their dims.

    A dim the layer's other inputs bind is theirs (``batch``); one they leave
    free (a cache's ``past``) becomes a model dim of the same name, shared by
    every layer whose state has it, so a decoder's blocks take one past length.
    """
    if not step.exposed:
        return {}
    if step.lead:
        raise InvalidModel(
            f"{definition.where(_index(definition, step.name), 'input')}: layer "
            f"{step.config.spec.name} runs at every position of a higher-rank input, so its "
            "state cannot be a model input; feed it a value of the rank it takes"
        )
    spec, params = step.config.spec, step.config.params
    bound = _bind_inputs(definition, _without_states(step), values)
    dynamic = {dim.name for dim in spec.dims}
    made = {}
    for tensor in spec.inputs:
        if tensor.name in step.exposed:
            dims = tuple(
                bound.get(dim, dim) if dim in dynamic else substituted(dim, _numbers(params))
                for dim in tensor.dims
            )
            made[state_name(step.name, tensor.name)] = _Value(dims, FLOAT)
    return made


def _streaming(
    steps: list[Step], bindings: Mapping[str, Mapping[str, str]], states: list[tuple[str, str]]
) -> Streaming | None:
    """The model's stream, when it carries states and every layer streams along one model dim.

    A layer streams if its spec says it can (a KV cache layer, or one that maps
    each position on its own, such as an embedding or a norm), or if it runs at
    every position (``Step.lead``) of that dim. A layer that mixes positions (a
    convolution over the sequence) leaves the model without a stream: the file
    still takes and gives back the states, and is verified as a function of them.
    """
    if not states:
        return None
    along: set[str | None] = set()
    grows: set[str | None] = set()
    folded: list[Step] = []
    for step in steps:
        streaming = step.config.spec.streaming
        if streaming is None or not streaming.applies(step.config.params):
            if not step.lead:
                return None
            folded.append(step)
            continue
        along.add(bindings[step.name].get(streaming.dim))
        if streaming.grows is not None:
            # A grown state's optional parts (a cache's padding) start empty at every call
            # unless fed: right while what would fill them (a padding mask) is left out too.
            grows.add(bindings[step.name].get(streaming.grows))
        elif any(name not in step.exposed for name, _ in streaming.carry):
            return None  # a state left out restarts at every call: it would not stream
    if len(along) != 1 or len(grows) > 1 or None in along | grows:
        return None
    dim = along.pop()
    assert dim is not None
    if any(dim not in step.lead for step in folded):
        return None
    return Streaming(dim=dim, carry=tuple(states), grows=grows.pop() if grows else None)


def _sizes_from_inputs(
    definition: ModelDefinition, step: Step, values: Mapping[str, _Value]
) -> dict[str, int]:
    """The size parameters a layer's inputs tell, where the model file and the weights do not.

    A convolution's ``in_channels`` is the channel count of what feeds it, a
    pooling layer's ``channels`` too: a parameter that stands alone for an input
    dim takes that dim's size unless the layer's ``params`` set it. The weights
    still decide where they can: a size they contradict is refused, naming both.
    """
    spec, given = step.config.spec, definition.layers[_index(definition, step.name)].params
    sizes: dict[str, int] = {}
    integer = {param.name for param in spec.params if param.type is int}
    for tensor, source in zip(spec.inputs, step.sources, strict=True):
        fed_dims = _as_fed(values[source].dims, step.lead) if source is not None else ()
        if source is None or len(tensor.dims) != len(fed_dims):
            continue
        for dim, fed in zip(tensor.dims, fed_dims, strict=True):
            if (
                dim in integer
                and dim not in given
                and _is_constant(fed)
                and int(fed) != step.config.params[dim]
            ):
                sizes[dim] = int(fed)
    return sizes


def _bind_inputs(
    definition: ModelDefinition, step: Step, values: Mapping[str, _Value]
) -> dict[str, str]:
    """The layer's dynamic dims, each as a formula over the model's dims, from its inputs.

    A fixed size must be met exactly; a dim two inputs set must be set alike.
    """
    spec, params = step.config.spec, step.config.params
    index = _index(definition, step.name)
    dynamic = {dim.name for dim in spec.dims}
    numbers = _numbers(params)
    bound: dict[str, str] = {}
    for tensor, source in zip(spec.inputs, step.sources, strict=True):
        if source is None:
            continue
        value = values[source]
        where = f"{definition.where(index, 'input')}: input {tensor.name} of layer {spec.name}"
        wanted = step.config.tensor_dtype(tensor)
        if (wanted if not tensor.is_float() else FLOAT) != value.dtype:
            raise InvalidModel(f"{where} takes {tensor.dtype}, but {source} is {value.dtype}")
        expected = tuple(
            dim if dim in dynamic else substituted(dim, numbers) for dim in tensor.dims
        )
        fed = _as_fed(value.dims, step.lead)
        if len(expected) != len(fed):
            raise InvalidModel(
                f"{where} has {len(expected)} dims ({', '.join(tensor.dims)}), but {source} has "
                f"{len(value.dims)} ({', '.join(value.dims)})"
            )
        for axis, (dim, given) in enumerate(zip(expected, fed, strict=True)):
            if dim in dynamic:
                if dim in bound and _normal(bound[dim]) != _normal(given):
                    raise InvalidModel(
                        f"{where}: its dim {dim} is {given} here but {bound[dim]} in another input"
                    )
                bound[dim] = given
            elif not _is_constant(given):
                raise InvalidModel(
                    f"{where}: axis {axis} ({tensor.dims[axis]}) is fixed at {dim}, but {source} "
                    f"has the dynamic size {given} there"
                )
            elif int(given) != int(dim):
                shape = "(" + ", ".join(value.dims) + ")"
                raise InvalidModel(
                    f"{where}: {source} has shape {shape}, and axis {axis} "
                    f"({tensor.dims[axis]}) must be {dim}, not {given}"
                )
    return bound


def _output_value(
    definition: ModelDefinition, step: Step, tensor: Tensor, bound: Mapping[str, str]
) -> _Value:
    spec = step.config.spec
    dynamic = {dim.name for dim in spec.dims}
    dims = []
    for dim in tensor.dims:
        names, _ = formula_names(parse_formula(dim)) if not dim.isdigit() else (set(), set())
        unbound = (names & dynamic) - set(bound)
        if unbound:
            raise InvalidModel(
                f"{definition.where(_index(definition, step.name))}: output {tensor.name} of "
                f"layer {spec.name} depends on dim {sorted(unbound)[0]}, which none of the "
                "inputs fed here sets"
            )
        dims.append(substituted(dim, _numbers(step.config.params), bound))
    if step.lead:
        dims[:1] = step.lead  # the folded batch dim, unfolded
    dtype = FLOAT if tensor.is_float() else tensor.dtype
    return _Value(tuple(dims), dtype)


def _lead(step: Step, values: Mapping[str, _Value]) -> tuple[str, ...]:
    """The leading dims to fold into the layer's batch dim, so that it runs at every position.

    torch's ``nn.Linear`` takes (batch, seq, features) as readily as (batch,
    features): it maps each vector on its own. A layer that declares a
    ``batch_dim`` says the same of it (its samples are independent), so when
    every input fed to it has k more leading dims than it takes, and its batch
    dim leads every input and output, those k + 1 dims are folded into its
    batch dim and unfolded after it (``layerport.model.module``). Anything else
    is left to the shape check to refuse.
    """
    spec = step.config.spec
    fed = [
        (tensor, values[source].dims)
        for tensor, source in zip(spec.inputs, step.sources, strict=True)
        if source is not None
    ]
    extra = {len(dims) - len(tensor.dims) for tensor, dims in fed}
    if len(extra) != 1 or min(extra) < 1 or spec.batch_dim is None:
        return ()
    count = extra.pop() + 1
    if any(t.dims[0] != spec.batch_dim for t in (*(t for t, _ in fed), *spec.outputs)):
        return ()
    leads = {tuple(_normal(dim) for dim in dims[:count]) for _, dims in fed}
    return leads.pop() if len(leads) == 1 else ()


def _as_fed(dims: tuple[str, ...], lead: tuple[str, ...]) -> tuple[str, ...]:
    """A value's dims as the layer sees them: its leading dims folded into one, if any."""
    if not lead:
        return dims
    return (_normal(" * ".join(f"({dim})" for dim in lead)), *dims[len(lead) :])


def _model_dim(
    definition: ModelDefinition,
    name: str,
    names: list[str],
    steps: list[Step],
    bindings: Mapping[str, Mapping[str, str]],
    values: Mapping[str, _Value],
) -> Dim:
    """A model dim: traced at the size of the first layer dim it sets directly, never below
    the smallest size every layer it reaches (through formulas) accepts."""
    first = next(
        (
            (step, dim)
            for step in steps
            for dim in step.config.spec.dims
            if bindings[step.name].get(dim.name) == name
        ),
        None,
    )
    if first is None:
        default, check_size, help_ = _DEFAULT_SIZE, None, ""
    else:
        step, dim = first
        default, help_ = step.config.dims.get(dim.name, dim.default), dim.help
        check_size = dim.check_size
    declared = next((dim for dim in definition.dims if dim.name == name), None)
    largest = None
    if declared is not None:
        default = declared.default or default
        check_size = declared.check_size or check_size
        largest = declared.max
        if largest is not None:
            default, check_size = min(default, largest), min(check_size or largest, largest)
    if first is not None and first[1].min_size == 0:
        # A state that grows (a KV cache's past) is empty at the prefill.
        return Dim(
            name, max(default, 2), help_, check_size=check_size, min_size=0, max_size=largest
        )
    defaults = dict.fromkeys(names, _DEFAULT_SIZE)
    for size in range(1, default + 1):
        if _all_valid({**defaults, name: size}, steps, bindings, values):
            return Dim(
                name,
                max(default, 2),
                help_,
                check_size=check_size,
                min_size=size,
                max_size=largest,
            )
    raise InvalidModel(
        f"{definition.where()}: no size of dim {name} up to {default} gives every layer a "
        "valid input; a layer's smallest size is above what its inputs can reach"
    )


def _all_valid(
    sizes: Mapping[str, int],
    steps: list[Step],
    bindings: Mapping[str, Mapping[str, str]],
    values: Mapping[str, _Value],
) -> bool:
    """Whether, at these model dims, every layer's dims reach their smallest size and
    every value's dims are positive."""
    for step in steps:
        for dim in step.config.spec.dims:
            text = bindings[step.name].get(dim.name)
            if text is not None and _size(text, sizes) < dim.smallest(step.config.params):
                return False
    return all(_size(text, sizes) >= 1 for value in values.values() for text in value.dims)


def _outputs(
    definition: ModelDefinition, steps: list[Step], values: Mapping[str, _Value]
) -> list[tuple[str, str]]:
    """(name, value) of each model output: ``[outputs]``, or the last layer's outputs."""
    inputs = {entry.name for entry in definition.inputs}
    if not definition.outputs:
        last = next(step for step in steps if step.name == definition.layers[-1].name)
        pairs = [
            (tensor.name, value)
            for tensor, value in zip(last.config.spec.outputs, last.values(), strict=True)
        ]
    else:
        layers = {step.name: step.config for step in steps}
        pairs = []
        for name, text in definition.outputs.items():
            key = f"outputs.{name}"
            if text in inputs:
                raise InvalidModel(
                    f"{definition.where(key=key)}: an output comes from a layer, not from input {text}"
                )
            layer, _, output = text.partition(".")
            if layer not in layers:
                raise InvalidModel(
                    f"{definition.where(key=key)}: {text!r} names no layer; layers: "
                    f"{', '.join(layers)}"
                )
            names = [tensor.name for tensor in layers[layer].spec.outputs]
            if output and output not in names:
                raise InvalidModel(
                    f"{definition.where(key=key)}: layer {layer} has no output {output!r}; "
                    f"its outputs: {', '.join(names)}"
                )
            pairs.append((name, f"{layer}.{output or names[0]}"))
    for name, _ in pairs:
        if name in inputs:
            raise InvalidModel(
                f"{definition.where(key='outputs')}: output {name} has an input's name; "
                "name it in [outputs]"
            )
    return pairs


def _model_input(definition: ModelDefinition, entry: Any, steps: list[Step]) -> Tensor:
    """A model input; an integer one's bound is declared, or the smallest its layers accept."""
    high = entry.high
    if entry.dtype in ("int64", "int32"):
        bounds = [
            (step.name, step.config.spec.value_range(tensor, step.config.params))
            for step in steps
            for tensor, source in zip(step.config.spec.inputs, step.sources, strict=True)
            if source == entry.name
        ]
        known = [bound[1] for _, bound in bounds if bound is not None]
        if high is not None:
            for name, bound in bounds:
                if bound is not None and high > bound[1]:
                    raise InvalidModel(
                        f"{definition.where(key=f'inputs.{entry.name}.high')}: high = {high}, "
                        f"but layer {name} takes {entry.name} below {bound[1]}; declare "
                        f"high = {bound[1]} or less"
                    )
            known = [high]
        if not known:
            raise InvalidModel(
                f"{definition.where(key=f'inputs.{entry.name}.high')}: no layer bounds the values "
                f"of integer input {entry.name}; declare high = N (values lie in [0, N))"
            )
        high = min(known)
    return Tensor(
        entry.name,
        tuple(str(dim) for dim in entry.shape),
        f"model input {entry.name}",
        dtype=entry.dtype,
        high=high,
    )


def _union_checkpoint(steps: list[Step], source: WeightsFile | None) -> Any:
    """Every layer's tensors under the layer's name, as the composed module's state dict names them."""
    if source is None:
        return None
    from layerport.weights import Checkpoint

    tensors = {}
    for step in steps:
        if step.config.checkpoint is not None:
            for name, tensor in step.config.checkpoint.tensors.items():
                tensors[f"{step.name}.{name}"] = tensor
    return Checkpoint(tensors)


def _batch_dim(
    steps: list[Step], bindings: Mapping[str, Mapping[str, str]], dims: set[str]
) -> str | None:
    """The model dim every layer with a batch dim binds it to, if they agree."""
    found = {
        # A layer run at every position has the model's batch as its first folded dim.
        step.lead[0] if step.lead else bindings[step.name].get(step.config.spec.batch_dim)
        for step in steps
        if step.config.spec.batch_dim is not None
    }
    return found.pop() if len(found) == 1 and found <= dims else None


def _precisions(steps: list[Step]) -> dict[str, str]:
    """The precisions every layer supports; verified by onnx's evaluator where any layer needs it."""
    first = steps[0].config.spec.precisions
    shared = [dtype for dtype in first if all(dtype in s.config.spec.precisions for s in steps)]
    return {
        dtype: "onnx-reference"
        if any(s.config.spec.precisions[dtype] == "onnx-reference" for s in steps)
        else "onnxruntime"
        for dtype in shared
    }


def _numbers(params: Params) -> dict[str, int | bool]:
    return {name: value for name, value in params.items() if isinstance(value, (int, bool))}


def _size(text: str, sizes: Mapping[str, int]) -> int:
    return evaluate(parse_formula(text), sizes)


def _is_constant(text: str) -> bool:
    return not formula_names(parse_formula(text))[0]


def _normal(text: str) -> str:
    return substituted(text, {})


def _index(definition: ModelDefinition, name: str) -> int:
    return [layer.name for layer in definition.layers].index(name)


@dataclass(frozen=True, eq=False)  # hashed by identity, as the closure it stands for
class Builder:
    """A composed model's ``LayerSpec.build``: the layers in run order, and the wiring.

    A class, not a closure, so that pinpointing (``layerport.verify.pinpoint``)
    can read the steps of the model it verifies.
    """

    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    """The value each model output is: ``LAYER.OUTPUT``."""
    dims: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Every value's dims, as formulas over the model's dims."""

    def __call__(self, params: Params) -> Any:
        from layerport.model.module import ComposedModule

        return ComposedModule(self.steps, self.inputs, self.outputs)


def exposing_every_layer(config: LayerConfig) -> LayerConfig:
    """The composed model with every layer's outputs as its outputs, named ``LAYER__OUTPUT``.

    Its export is the model's own trace with the values between layers kept,
    so each layer's output in onnxruntime can be held against its eager twin
    (``layerport.verify.pinpoint``). Same seed, same checkpoint: same weights.
    """
    build = config.spec.build
    assert isinstance(build, Builder)
    values = [value for step in build.steps for value in step.values()]
    producers = {value: step for step in build.steps for value in step.values()}
    outputs = []
    for value in values:
        step = producers[value]
        tensor = next(t for t in step.config.spec.outputs if f"{step.name}.{t.name}" == value)
        outputs.append(Tensor(exposed_name(value), build.dims[value], value, dtype=tensor.dtype))
    exposing = dataclasses.replace(build, outputs=tuple(values))
    # One run at a failing case's inputs: no stream to prove, and the stream's carried
    # outputs are renamed here (LAYER__OUTPUT), so it is left out.
    spec = dataclasses.replace(
        config.spec,
        build=exposing,
        outputs=tuple(outputs),
        flops=None,
        batch_dim=None,
        streaming=None,
    )
    layer = RegisteredLayer(spec, config.layer.plugin)
    return dataclasses.replace(config, layer=layer)


def exposed_name(value: str) -> str:
    """``encoder__y`` for the value ``encoder.y``: an output name of the exposing export."""
    return value.replace(".", "__")


def model_steps(config: LayerConfig) -> tuple[Step, ...]:
    """The layers of a composed model's configuration, in run order; empty for a layer."""
    build = config.spec.build
    return build.steps if isinstance(build, Builder) else ()

"""A model file drafted from a checkpoint: its groups of tensors, each matched to layers.

A checkpoint names its tensors by module (``0.weight``, ``encoder.lstm.weight_ih_l0``),
so its groups are its key prefixes, in the file's order. Each group is matched
against every registered layer the way a ``weights`` prefix is: the layer reads
its sizes from the group (``params_from_weights``), and fits when the tensors
it would hold (``weights(params)``) are the group's, by name and by shape. The
draft never guesses silently: where several layers fit, where none does, where
a layer without weights may stand between two groups, or where one layer's
output cannot feed the next, it says so in a comment marked ``CHECK``.

Beside a checkpoint that transformers saved, its ``config.json`` tells what
shapes cannot (the heads, the norms' epsilon, the rotary base, the trained
positions, a head that shares the embedding's table): the draft gives those
values to the layers that take them and writes them into ``params``
(``layerport.model.transformers_config``).

Torch-free for ``.safetensors`` and ``.npz`` files (``read_tensor_shapes``).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from layerport.errors import BadFile
from layerport.model.transformers_config import (
    CONFIG_NAME,
    TransformersConfig,
    read_transformers_config,
)
from layerport.registry import RegisteredLayer, Registry
from layerport.spec import LayerSpec, ParamValue, Tensor
from layerport.weights import read_tensor_shapes

Shapes = Mapping[str, tuple[int, ...]]
Hints = Mapping[str, ParamValue]

# Groups larger than this are not tried in every order against layers' names.
_MOST_RENAMED = 6
_CHECK = "# CHECK: "


@dataclass(frozen=True)
class Fit:
    """A layer that fits a group of tensors, with the parameters their shapes tell.

    ``renamed`` maps each of the layer's weight names to the file's key, for a
    group whose names are not the layer's (a suggestion: never written as a
    layer, only in a comment).
    """

    layer: RegisteredLayer
    told: dict[str, ParamValue]
    params: dict[str, ParamValue]
    renamed: dict[str, str] | None = None
    use: str = ""  # the name a model file's ``use`` gives it: PLUGIN:LAYER where the name is shared
    # A size the weights do not tell alone, found by trying the sizes they hold.
    searched: dict[str, ParamValue] | None = None
    # What the checkpoint's config.json tells that the weights do not (the heads).
    given: dict[str, ParamValue] | None = None


@dataclass(frozen=True)
class TensorGroup:
    """Tensors under one prefix (``encoder.lstm.``), by their names below it, in file order.

    ``separator`` is ``.`` for a prefix a model file's ``weights`` can select, else
    the character that split a name with no dots (``fc_w`` -> ``fc`` and ``w``).
    ``tied`` marks a second use of a group's tensors: a language model's head
    that shares its embedding's table. ``settled`` names the module whose name
    settled the layer among several that fit (transformers' ``embed_tokens``).
    """

    prefix: str
    shapes: dict[str, tuple[int, ...]]
    fits: tuple[Fit, ...]
    separator: str = "."
    tied: bool = False
    settled: str = ""

    def keys(self) -> list[str]:
        """The tensors' full names in the file."""
        return [self.prefix + name for name in self.shapes]


@dataclass(frozen=True)
class Draft:
    """A checkpoint's groups of tensors and the layers that fit each, in the file's order."""

    path: Path
    groups: tuple[TensorGroup, ...]
    ordered: bool  # False for a format that keeps no order (safetensors)
    config: TransformersConfig | None = None  # the config.json beside a transformers checkpoint


def draft_model(registry: Registry, path: Path) -> Draft:
    """Read ``path``'s tensor names and shapes and match each group to registered layers.

    Reads the ``config.json`` beside ``path`` where transformers wrote one.
    Raises ``BadFile`` for a file that is missing, not a checkpoint, or holds no
    tensors, and for a ``config.json`` that cannot be read as JSON.
    """
    from layerport.weights import weights_format

    shapes = read_tensor_shapes(path)
    if not shapes:
        raise BadFile(f"{path} holds no tensors to draft a model from")
    config = read_transformers_config(path)
    hints = config.params if config is not None else {}
    shared = {layer.name for layer in registry if len(registry.providers(layer.name)) > 1}
    layers = sorted(registry, key=lambda layer: (layer.name, layer.plugin.name))
    groups = []
    for prefix, group, separator in _groups(layers, "", dict(shapes), hints):
        fits = _fits(layers, group, hints) if separator == "." else ()
        fits = fits or _renamed_fits(layers, group, hints)
        uses = tuple(
            replace(
                fit, use=fit.layer.qualified_name if fit.layer.name in shared else fit.layer.name
            )
            for fit in fits
        )
        groups.append(TensorGroup(prefix, group, uses, separator))
    ordered = weights_format(path) != "safetensors"
    if not ordered:
        groups.sort(key=lambda group: _natural(group.prefix))
    if config is not None:
        if config.causal_lm:
            groups = _head_last(groups, config)
        groups = [_settled(group, config) for group in groups]
    return Draft(path, tuple(groups), ordered, config)


def _natural(prefix: str) -> list[tuple[int, int | str]]:
    """A sort key that counts numbers: ``layers.2.`` before ``layers.10.``."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", prefix)]


# transformers' name for a causal language model's head (``LlamaForCausalLM.lm_head``).
_HEAD = "lm_head."


def _head_last(groups: list[TensorGroup], config: TransformersConfig) -> list[TensorGroup]:
    """A causal LM's groups as it runs them: its head after the rest.

    A head that shares the embedding's table (``tie_word_embeddings``) has no
    tensors of its own: the table's group is used a second time, last.
    """
    heads = [group for group in groups if group.prefix == _HEAD]
    rest = [group for group in groups if group.prefix != _HEAD]
    if heads or config.tied_embeddings is False or not rest:
        return rest + heads
    table = rest[0]  # the embedding: the first module a language model runs
    return [*rest, replace(table, tied=True)]


def _settled(group: TensorGroup, config: TransformersConfig) -> TensorGroup:
    """``group`` with the layer its module's name settles first among its fits, if it fits."""
    module = _HEAD if group.tied else group.prefix
    layer = config.module_layer(module)
    exact = [fit for fit in group.fits if fit.renamed is None]
    settled = [fit for fit in exact if fit.layer.name == layer]
    if len(exact) < 2 or not settled:
        return group
    others = tuple(fit for fit in group.fits if fit is not settled[0])
    return replace(group, fits=(settled[0], *others), settled=module.rstrip(".").rpartition(".")[2])


def _groups(
    layers: Sequence[RegisteredLayer],
    prefix: str,
    shapes: dict[str, tuple[int, ...]],
    hints: Hints,
) -> list[tuple[str, dict[str, tuple[int, ...]], str]]:
    """``shapes`` split by prefix, widest first: a prefix some layer fits stays whole."""
    if all("." not in name for name in shapes):
        if prefix or len(shapes) == 1 or _fits(layers, shapes, hints):
            return [(prefix, shapes, ".")]
        return [(stem, group, sep) for stem, group, sep in _stems(shapes)]
    if _fits(layers, shapes, hints):
        return [(prefix, shapes, ".")]
    children: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        head, dot, rest = name.partition(".")
        # A module's own tensors (no dot left) stay under its prefix, as one group.
        children.setdefault(head + dot if dot else "", {})[rest if dot else name] = shape
    found = []
    for head, group in children.items():
        if head:
            found += _groups(layers, prefix + head, group, hints)
        else:
            found.append((prefix, group, "."))
    return found


def _stems(
    shapes: Mapping[str, tuple[int, ...]],
) -> list[tuple[str, dict[str, tuple[int, ...]], str]]:
    """Names with no dots grouped by their stem: ``fc_w`` and ``fc_b`` under ``fc``."""
    groups: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        cut = max(name.rfind("/"), name.rfind("_"))
        stem, separator = (name[: cut + 1], name[cut]) if cut > 0 else (name, "")
        groups.setdefault((stem, separator), {})[name.removeprefix(stem) or name] = shape
    return [(stem if sep else "", group, sep or "_") for (stem, sep), group in groups.items()]


def _fits(layers: Iterable[RegisteredLayer], shapes: Shapes, hints: Hints) -> tuple[Fit, ...]:
    """Every layer whose weights, at the sizes ``shapes`` tell (and ``hints`` give), are
    exactly ``shapes``."""
    found = []
    for layer in layers:
        fit = _fit(layer, shapes, hints)
        if fit is not None:
            found.append(fit)
    # A fit by a size the weights do not tell alone comes after every exact one.
    return tuple(sorted(found, key=lambda fit: fit.searched is not None))


def _fit(layer: RegisteredLayer, shapes: Shapes, hints: Hints) -> Fit | None:
    """The layer's fit with the hints it takes, or, where they do not fit, without them."""
    names = {param.name for param in layer.spec.params}
    given = {name: value for name, value in hints.items() if name in names}
    return (_fit_given(layer, shapes, given) if given else None) or _fit_given(layer, shapes, {})


def _fit_given(layer: RegisteredLayer, shapes: Shapes, given: Hints) -> Fit | None:
    spec = layer.spec
    try:
        with layer.plugin_code("params_from_weights()"):
            raw = dict(spec.params_from_weights(shapes)) if spec.params_from_weights else {}
            # What the tensors tell outranks what a config says.
            given = {name: value for name, value in given.items() if name not in raw}
            params = spec.resolve_params({**raw, **given})
            expected = spec.weights(params)
    except Exception:  # a group the layer cannot read is a group it does not fit
        return None
    told = {name: params[name] for name in raw if name in params}
    fit = Fit(layer, told, params, given={name: params[name] for name in given} or None)
    if _same(expected, shapes):
        return fit
    if set(expected) != set(shapes):
        return None
    return _searched_fit(fit, {**raw, **given}, shapes)


def _same(expected: Mapping[str, Sequence[int]], shapes: Shapes) -> bool:
    return {name: tuple(shape) for name, shape in expected.items()} == dict(shapes)


def _searched_fit(fit: Fit, raw: Mapping[str, ParamValue], shapes: Shapes) -> Fit | None:
    """The names fit and the sizes do not: try each size the weights hold for one untold parameter.

    ``conv2d``'s weights do not tell ``in_channels`` alone (``groups`` divides it),
    so the draft tries the sizes its shapes hold and says which one fits.
    """
    layer, spec = fit.layer, fit.layer.spec
    sizes = sorted({size for shape in shapes.values() for size in shape})
    for param in spec.params:
        if param.type is not int or param.name in raw:
            continue
        for size in sizes:
            try:
                with layer.plugin_code("weights()"):
                    params = spec.resolve_params({**raw, param.name: size})
                    expected = spec.weights(params)
            except Exception:  # a size the layer refuses is not the one
                continue
            if _same(expected, shapes):
                return replace(fit, params=params, searched={param.name: size})
    return None


def _renamed_fits(
    layers: Iterable[RegisteredLayer], shapes: Shapes, hints: Hints
) -> tuple[Fit, ...]:
    """Layers whose weights the group's shapes fit under other names (``fc_w`` as ``weight``).

    Every way of giving the layer's names to the group's tensors is tried, for
    each set of names the layer may have (``LayerSpec.possible_weights``' variants).
    """
    if len(shapes) > _MOST_RENAMED:
        return ()
    keys = list(shapes)
    found = []
    for layer in layers:
        fit = next(
            (
                replace(fit, renamed=dict(zip(names, order, strict=True)))
                for names in _name_sets(layer.spec, len(keys))
                for order in itertools.permutations(keys)
                for fit in [
                    _fit(layer, {n: shapes[k] for n, k in zip(names, order, strict=True)}, hints)
                ]
                if fit is not None
            ),
            None,
        )
        if fit is not None:
            found.append(fit)
    return tuple(found)


def _name_sets(spec: LayerSpec, count: int) -> list[tuple[str, ...]]:
    """The sets of ``count`` weight names the layer has at its defaults and one flag away."""
    variants = [spec.resolve_params()]
    variants += [
        {**variants[0], param.name: not variants[0][param.name]}
        for param in spec.params
        if param.type is bool
    ]
    sets: list[tuple[str, ...]] = []
    for params in variants:
        try:
            names = tuple(spec.weights(params))
        except Exception:  # a variant the plugin refuses names no weights
            continue
        if len(names) == count and names not in sets:
            sets.append(names)
    return sets


# ---------------------------------------------------------------------------
# The model file, as text


def render_draft(draft: Draft) -> str:
    """The draft as a model file (TOML), every uncertainty a ``# CHECK:`` comment."""
    chosen = _choose(draft.groups)
    matched = sum(fit is not None for fit in chosen)
    config = draft.config
    last = draft.groups[-1]
    language_model = config is not None and config.causal_lm and (last.prefix == _HEAD or last.tied)
    lines = [
        f"# Drafted by layerport draft from {draft.path.name}: {len(draft.groups)} groups of "
        f"tensors, {matched} matched to a layer.",
        "# Check every line marked CHECK before exporting.",
        *_order_comment(draft.ordered, language_model),
    ]
    if config is not None:
        lines += [
            "# What the tensors do not tell (heads, epsilons, rotary base, positions) is from",
            f"# {CONFIG_NAME} beside them (transformers' model_type {config.model_type!r}).",
            *(f"{_CHECK}{check}" for check in config.checks),
            *_config_checks(draft, chosen, config),
        ]
    stem = config.model_type if config is not None else draft.path.stem
    name = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "model"
    lines += ["", "[model]", f"name = {_string(name)}"]
    first = next((fit for fit in chosen if fit is not None), None)
    if first is not None:
        lines += ["", *_input_section(first, language_model)]
    taken: set[str] = set()
    seen: dict[str, int] = {}  # the highest index seen in each numbered container
    previous: tuple[Fit, str] | None = None
    for group, fit in zip(draft.groups, chosen, strict=True):
        lines += _gap_comment(group.prefix, seen)
        if fit is None:
            lines += _unmatched(group)
            continue
        stem = "lm_head" if group.tied else _layer_name(group.prefix, fit.layer.name)
        layer_name = _unique(stem, taken)
        lines += _layer(group, fit, layer_name, previous, fit is first)
        previous = (fit, layer_name)
    lines += _cache_section([fit for fit in chosen if fit is not None], config)
    if previous is not None:
        fit, layer_name = previous
        output = fit.layer.spec.outputs[0].name
        lines += [
            "",
            *(
                ["# The head's scores for the next token, as transformers names them."]
                if language_model
                else [f"{_CHECK}a placeholder: the last layer's first output."]
            ),
            "[outputs]",
            f"{_key('logits' if language_model else output)} = {_string(f'{layer_name}.{output}')}",
        ]
    return "\n".join(lines) + "\n"


def _config_checks(
    draft: Draft, chosen: Sequence[Fit | None], config: TransformersConfig
) -> list[str]:
    """Where the config and the tensors do not tell one story."""
    checks = []
    heads: dict[str, ParamValue] = {
        name: config.params[name] for name in ("num_heads", "num_kv_heads") if name in config.params
    }
    if heads and not any(fit is not None and "num_heads" in (fit.given or {}) for fit in chosen):
        checks.append(
            f"{_CHECK}{CONFIG_NAME}'s heads ({_assignments(heads)}) fit no layer's tensors "
            "here: check them, and the family, against the tensors' shapes."
        )
    last = draft.groups[-1]
    if config.causal_lm and last.prefix != _HEAD and not last.tied:
        checks.append(
            f"{_CHECK}{CONFIG_NAME} names a causal language model whose head has tensors of its "
            f"own (tie_word_embeddings false), but none is under {_HEAD!r}: the head is missing."
        )
    return checks


def _order_comment(ordered: bool, language_model: bool) -> list[str]:
    if ordered:
        return [
            "# The layers follow the checkpoint's order, the order its modules were created:",
            "# usually, not always, the order the model runs them.",
        ]
    if language_model:
        return [
            "# The layers are in the order of their names (numbers counted), the head last, as",
            "# transformers' causal language models run them (this format keeps no order).",
        ]
    return [
        f"{_CHECK}this format keeps no order; the layers are in the order of their names",
        "# (numbers counted), which need not be the order the model runs them.",
    ]


def _cache_section(fits: Sequence[Fit], config: TransformersConfig | None) -> list[str]:
    """A grown state's dim (a KV cache's ``past``) capped at the positions the model was trained on."""
    if config is None or config.max_positions is None:
        return []
    grown = {
        fit.layer.spec.streaming.grows
        for fit in fits
        if fit.layer.spec.streaming is not None and fit.layer.spec.streaming.grows is not None
    }
    lines = []
    for dim in sorted(grown):
        lines += [
            "",
            f"# The longest cache: the positions it was trained on ({CONFIG_NAME}'s "
            "max_position_embeddings).",
            f"[dims.{_key(dim)}]",
            f"max = {config.max_positions}",
        ]
    return lines


def _choose(groups: Sequence[TensorGroup]) -> list[Fit | None]:
    """One fit per group that has one by name: the first that fits its neighbours best,
    or the one its module's name settled.

    A fit fits its neighbours when its input takes the previous layer's output
    and its output is what some fit of the next group takes.
    """
    exact = [[fit for fit in group.fits if fit.renamed is None] for group in groups]
    chosen: list[Fit | None] = []
    previous: Fit | None = None
    for index, fits in enumerate(exact):
        if not fits:
            chosen.append(None)
            continue
        following = next((later for later in exact[index + 1 :] if later), [])
        scores = [_neighbourly(fit, previous, following) for fit in fits]
        fit = fits[0] if groups[index].settled else fits[scores.index(max(scores))]
        chosen.append(fit)
        previous = fit
    return chosen


def _neighbourly(fit: Fit, previous: Fit | None, following: Sequence[Fit]) -> tuple[int, int]:
    """How well ``fit`` takes ``previous``'s output, and how well the best of ``following``
    takes its own (``_takes``); 2 where there is no neighbour."""
    return (
        2 if previous is None else _takes(previous, fit),
        max((_takes(fit, after) for after in following), default=2),
    )


def _takes(previous: Fit, fit: Fit) -> int:
    """2 where ``fit``'s first input has the kind (float or not) and rank of ``previous``'s
    output; 1 where its rank is lower and led by the layer's batch dim (a model file then
    runs it at every position, as ``nn.Linear`` runs: ``layerport.model.compose``); else 0."""
    spec = fit.layer.spec
    output, tensor = previous.layer.spec.outputs[0], spec.inputs[0]
    if output.is_float() != tensor.is_float():
        return 0
    if len(output.dims) == len(tensor.dims):
        return 2
    at_every_position = spec.batch_dim is not None and tensor.dims[0] == spec.batch_dim
    return 1 if len(output.dims) > len(tensor.dims) and at_every_position else 0


def _input_section(first: Fit, language_model: bool) -> list[str]:
    spec = first.layer.spec
    tensor = spec.inputs[0]
    dtype = "float32" if tensor.is_float() else tensor.dtype
    shape = ", ".join(
        _string(size) if isinstance(size, str) else str(size)
        for size in _sizes(spec, tensor, first.params)
    )
    if language_model and not tensor.is_float():
        comment = ["# The token ids, transformers' input_ids."]
    else:
        comment = [
            f"{_CHECK}a placeholder: the input of the first layer ({first.use}'s {tensor.name}).",
            "# Name it as the model's input, and check its dtype and its dims' names and sizes.",
        ]
    return [
        *comment,
        f"[inputs.{_key(tensor.name)}]",
        f"dtype = {_string(dtype)}",
        f"shape = [{shape}]",
    ]


def _sizes(spec: LayerSpec, tensor: Tensor, params: Mapping[str, ParamValue]) -> list[str | int]:
    """Each axis: its size where the parameters fix it, else its dynamic dim's name or formula."""
    dynamic = {dim.name for dim in spec.dims}
    derived = spec.derived_axes(tensor)
    shape = spec.shape(tensor, params, {dim.name: dim.default for dim in spec.dims})
    return [
        text if text in dynamic or axis in derived else size
        for axis, (text, size) in enumerate(zip(tensor.dims, shape, strict=True))
    ]


def _layer(
    group: TensorGroup, fit: Fit, name: str, previous: tuple[Fit, str] | None, first: bool
) -> list[str]:
    lines = [""]
    others = [other.use for other in group.fits if other is not fit and other.renamed is None]
    if others and group.settled:
        lines.append(
            f"# transformers' {group.settled}: {fit.use} (its tensors fit {', '.join(others)} too)."
        )
    elif others:
        where = repr(group.prefix) if group.prefix else "the file's top level"
        lines += [
            f"{_CHECK}the tensors under {where} fit {', '.join([fit.use, *others])}:",
            f"# {fit.use} is the first whose input and output fit its neighbours'. Choose one.",
        ]
    if group.tied:
        lines.append(
            "# The head shares the embedding's table (tie_word_embeddings): its tensors, again."
        )
    if previous is not None:
        lines += _feed_comment(previous, fit)
    lines += [
        "[[layer]]",
        f"name = {_string(name)}",
        f"use = {_string(fit.use)}",
        f"weights = {_string(group.prefix)}",
    ]
    if first:
        lines.append(f"input = {_string(fit.layer.spec.inputs[0].name)}")
    if fit.told:
        lines.append(f"# from the weights: {_assignments(fit.told)}")
    if fit.given:
        lines.append(f"# from {CONFIG_NAME}: {', '.join(fit.given)}")
    if fit.searched:
        lines.append(
            f"{_CHECK}the weights do not tell {', '.join(fit.searched)} alone; this is the size "
            "that makes their shapes fit."
        )
    if fit.given or fit.searched:
        lines.append(
            f"params = {{ {_assignments({**(fit.given or {}), **(fit.searched or {})})} }}"
        )
    known = {**fit.told, **(fit.searched or {}), **(fit.given or {})}
    untold = {key: value for key, value in fit.params.items() if key not in known}
    if untold:
        lines += [
            f"{_CHECK}the weights do not tell these; put any that differ from the defaults "
            "in params:",
            f"#   {_assignments(untold)}",
        ]
    return lines


def _assignments(values: Mapping[str, ParamValue]) -> str:
    return ", ".join(f"{_key(key)} = {_value(value)}" for key, value in values.items())


def _feed_comment(previous: tuple[Fit, str], fit: Fit) -> list[str]:
    """A comment where the previous layer's first output cannot be this layer's first input."""
    before, before_name = previous
    output, tensor = before.layer.spec.outputs[0], fit.layer.spec.inputs[0]
    given = _sizes(before.layer.spec, output, before.params)
    taken = _sizes(fit.layer.spec, tensor, fit.params)
    if isinstance(taken[-1], int) and not isinstance(given[-1], int):
        return [
            f"{_CHECK}{before_name}'s {output.name} ends in {given[-1]}, not the {taken[-1]} "
            "features this layer takes:",
            "# a layer without weights (flatten, permute, reshape?) stands between, or the order differs.",
        ]
    pairs = (
        list(zip(given, taken, strict=True))
        if len(given) == len(taken)
        else [(given[-1], taken[-1])]
    )
    clashes = [
        f"{before_name}'s {output.name} has {a} where this layer takes {b}"
        for a, b in pairs
        if isinstance(a, int) and isinstance(b, int) and a != b
    ]
    return [f"{_CHECK}{clashes[0]}: the order, or a layer between, differs."] if clashes else []


def _gap_comment(prefix: str, seen: dict[str, int]) -> list[str]:
    """Where a Sequential's or ModuleList's numbered modules skip an index, in a comment.

    ``seen`` holds the highest index met so far in each container, and is updated.
    """
    parts = prefix.split(".")[:-1]
    missing = []
    for depth, part in enumerate(parts):
        if not part.isdigit():
            continue
        parent = "".join(f"{p}." for p in parts[:depth])
        index, start = int(part), seen.get(parent, -1) + 1
        if index > start:
            missing.append(
                f"{parent}{start}"
                if index == start + 1
                else f"{parent}{start} to {parent}{index - 1}"
            )
        seen[parent] = max(seen.get(parent, -1), index)
    if not missing:
        return []
    return [
        "",
        f"{_CHECK}{', '.join(missing)} hold no weights: an activation, pooling, dropout or",
        "# flatten stands there (they leave no tensors in a checkpoint); add it in its place.",
    ]


def _unmatched(group: TensorGroup) -> list[str]:
    keys = group.keys()
    listed = ", ".join(
        f"{key} {shape}" for key, shape in zip(keys, group.shapes.values(), strict=True)
    )
    where = f"under {group.prefix!r}" if group.separator == "." and group.prefix else "named"
    count = "the tensor" if len(keys) == 1 else f"the {len(keys)} tensors"
    lines = ["", f"{_CHECK}no registered layer fits {count} {where} {listed}."]
    for fit in group.fits:
        renamed = (fit.renamed or {}).items()
        mapped = ", ".join(f"{_key(n)} = {_string(group.prefix + k)}" for n, k in renamed)
        lines.append(f"# By their shapes alone they fit {fit.use}: weights = {{ {mapped} }}")
    if not group.fits:
        lines.append("# Map each to a layer's weight name ('layerport show LAYER' lists them):")
    mapped = ", ".join(f"WEIGHT = {_string(key)}" for key in keys)
    return [
        *lines,
        "# [[layer]]",
        f"# name = {_string(_layer_name(group.prefix, 'layer'))}",
        '# use = "LAYER"',
        f"# weights = {{ {mapped} }}",
    ]


def _layer_name(prefix: str, layer: str) -> str:
    name = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_")
    if not name:
        return layer
    return f"{layer}_{name}" if name[0].isdigit() else name


def _unique(name: str, taken: set[str]) -> str:
    candidate = name
    for number in itertools.count(2):
        if candidate not in taken:
            break
        candidate = f"{name}_{number}"
    taken.add(candidate)
    return candidate


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's."""
    return json.dumps(text, ensure_ascii=False)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _string(name)


def _value(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    return repr(value)

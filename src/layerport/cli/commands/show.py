"""``layerport show``: a layer type's parameters, inputs, outputs and weights (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from layerport.cli.app import get_registry
from layerport.cli.options import json_option, params_option, weights_option
from layerport.cli.output import print_fields, print_json, print_table
from layerport.config import LayerConfig, resolve_config
from layerport.dtypes import DTYPES
from layerport.model import model_steps


@click.command()
@click.argument("layer")
@params_option
@weights_option
@json_option
def show(layer: str, params: dict[str, str], weights: Path | None, json_: bool) -> None:
    """Show a layer type's (or a model file's) parameters, inputs, outputs and weights.

    With --weights, the sizes the weights tell are read from them.

    \b
    Examples:
      layerport show rnn -p hidden_size=32
      layerport show tagger.toml --weights ckpt.pt
    """
    config = resolve_config(get_registry(), layer, params=params, weights=weights)
    spec = config.spec
    dynamic = {dim.name: dim for dim in spec.dims}
    sources = {
        name: {"part": part.name, "key": key}
        for part in spec.weight_parts
        for key, name in part.keys.items()
    }
    description: dict[str, Any] = {
        "name": spec.name,
        "qualified_name": config.layer.qualified_name,
        "description": spec.description,
        "plugin": {"name": config.layer.plugin.name, "version": config.layer.plugin.version},
        "params": [
            {
                "name": param.name,
                "type": param.type.__name__,
                "default": param.default,
                "value": config.params[param.name],
                "allowed": param.allowed(),
                "help": param.help,
            }
            for param in spec.params
        ],
        "dims": [
            {
                "name": dim.name,
                "default": dim.default,
                "min_size": dim.min_size,
                "smallest": dim.smallest(config.params),
                "largest": dim.max_size,
                "help": dim.help,
            }
            for dim in spec.dims
        ],
        "inputs": [_describe_tensor(config, tensor, dynamic) for tensor in spec.inputs],
        "outputs": [_describe_tensor(config, tensor, dynamic) for tensor in spec.outputs],
        "weights": [
            {"name": name, "shape": list(shape), "part": sources.get(name)}
            for name, shape in config.weight_shapes().items()
        ],
        "weight_parts": [
            {"name": part.name, "description": part.description, "keys": dict(part.keys)}
            for part in spec.weight_parts
        ],
        "layers": [
            {
                "name": step.name,
                "layer": step.config.layer.qualified_name,
                "params": dict(step.config.params),
                "inputs": {
                    tensor.name: source
                    for tensor, source in zip(step.config.spec.inputs, step.sources, strict=True)
                    if source is not None
                },
            }
            for step in model_steps(config)
        ],
        "precisions": dict(spec.precisions),
        "forms": {
            form.name: {
                "description": form.description,
                "refused": form.refuses(config.params, config.dtype),
            }
            for form in spec.forms
        },
        "tolerances": {
            dtype: {"atol": tol.atol, "rtol": tol.rtol}
            for dtype in DTYPES
            for tol in [spec.tolerance(dtype)]
        },
    }
    if json_:
        print_json(description)
        return
    print_fields(
        [
            ("layer", f"{spec.name} - {spec.description}"),
            ("plugin", f"{config.layer.plugin.name} {config.layer.plugin.version}"),
            (
                "precisions",
                ", ".join(f"{dtype} ({runtime})" for dtype, runtime in spec.precisions.items()),
            ),
            *(
                [
                    (
                        "forms",
                        "standard, " + ", ".join(_form_line(name, form) for name, form in forms),
                    )
                ]
                if (forms := list(description["forms"].items()))
                else []
            ),
        ]
    )
    if description["layers"]:
        print_table(
            ("layer", "type", "fed by", "parameters"),
            (
                (
                    step["name"],
                    step["layer"],
                    ", ".join(f"{name} = {source}" for name, source in step["inputs"].items()),
                    " ".join(f"{name}={value}" for name, value in step["params"].items()),
                )
                for step in description["layers"]
            ),
            title="Layers, in run order",
        )
    else:
        print_table(
            ("parameter", "type", "value", "default", "allowed", "help"),
            (
                (p["name"], p["type"], p["value"], p["default"], p["allowed"], p["help"])
                for p in description["params"]
            ),
            title="Parameters",
        )
    bounded = any(dim["largest"] is not None for dim in description["dims"])
    if bounded or any(dim["min_size"] != 1 for dim in description["dims"]):
        print_table(
            (
                "dynamic dim",
                "default",
                "smallest",
                "from",
                *(["largest"] if bounded else []),
                "help",
            ),
            (
                (
                    d["name"],
                    d["default"],
                    d["smallest"],
                    d["min_size"],
                    *([d["largest"] if d["largest"] is not None else "-"] if bounded else []),
                    d["help"],
                )
                for d in description["dims"]
            ),
            title="Dynamic dims",
        )
    print_table(
        ("tensor", "kind", "dtype", "dims (* dynamic)", "shape at defaults", "help"),
        (
            (t["name"], kind, _dtype_text(t), t["dims_text"], t["shape"], t["help"])
            for kind in ("input", "output")
            for t in description[kind + "s"]
        ),
        title="Inputs and outputs",
    )
    if not spec.weight_parts:
        print_table(
            ("weight", "shape"),
            ((w["name"], w["shape"]) for w in description["weights"]),
            title="Weights",
        )
        return
    print_table(
        ("weight", "shape", "or, in a weight part (--weights-prefix PART=PREFIX)"),
        (
            (w["name"], w["shape"], f"{w['part']['part']}: {w['part']['key']}" if w["part"] else "")
            for w in description["weights"]
        ),
        title="Weights",
    )
    print_table(
        ("weight part", "holds"),
        ((part.name, part.description) for part in spec.weight_parts),
        title="Weight parts",
    )


def _describe_tensor(config: LayerConfig, tensor: Any, dynamic: dict[str, Any]) -> dict[str, Any]:
    values = config.spec.value_range(tensor, config.params)
    return {
        "name": tensor.name,
        "dims": [{"name": dim, "dynamic": dim in dynamic} for dim in tensor.dims],
        "dims_text": " x ".join(f"{dim}*" if dim in dynamic else dim for dim in tensor.dims)
        + (" (optional: zeros)" if tensor.optional else ""),
        "shape": list(config.shape(tensor)),
        "dtype": tensor.dtype,
        "values": list(values) if values else None,
        "optional": tensor.optional,
        "help": tensor.help,
    }


def _dtype_text(tensor: dict[str, Any]) -> str:
    """``float`` (the layer's precision), ``bool``, or ``int64 0..99`` with the valid values."""
    if tensor["values"] is None:
        return str(tensor["dtype"])
    low, high = tensor["values"]
    return f"{tensor['dtype']} {low}..{high - 1}"


def _form_line(name: str, form: dict[str, Any]) -> str:
    """``fused (onnxruntime's ...)``, or why these parameters cannot take it."""
    if form["refused"] is not None:
        return f"{name} (not with these parameters: {form['refused']})"
    return f"{name} ({form['description']})"

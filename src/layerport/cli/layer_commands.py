"""``list``, ``show``, ``plugins`` (torch-free) and ``run``: the registry and one eager pass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from layerport import plugins
from layerport.cli.app import (
    _State,
    cli,
    config_from_options,
    get_registry,
    json_option,
    layer_options,
    output_option,
    report_outputs,
    require_export_dependencies,
)
from layerport.config import LayerConfig, parse_assignments, parse_dim_sizes, resolve_config
from layerport.render import print_fields, print_json, print_table, warn
from layerport.spec import DTYPES

# ---------------------------------------------------------------------------
# list, show, plugins: torch-free


@cli.command(name="list")
@json_option
def list_(json_: bool) -> None:
    """List every registered layer type.

    \b
    Example:
      layerport list --json
    """
    registry = get_registry()
    rows: list[dict[str, Any]] = [
        {
            "name": layer.name,
            "qualified_name": layer.qualified_name,
            "description": layer.spec.description,
            "plugin": layer.plugin.name,
            "version": layer.plugin.version,
            "ambiguous": len(registry.providers(layer.name)) > 1,
        }
        for layer in registry
    ]
    if json_:
        print_json(rows)
        return
    print_table(
        ("layer", "description", "plugin"),
        (
            (
                row["qualified_name"] if row["ambiguous"] else row["name"],
                row["description"],
                f"{row['plugin']} {row['version']}",
            )
            for row in rows
        ),
    )


@cli.command()
@click.argument("layer")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Show the weights for these parameter values (repeatable).",
)
@json_option
def show(layer: str, params: Sequence[str], json_: bool) -> None:
    """Show a layer type's parameters, inputs, outputs and weights.

    \b
    Example:
      layerport show rnn -p hidden_size=32
    """
    config = resolve_config(get_registry(), layer, params=parse_assignments(params, "-p"))
    spec = config.spec
    dynamic = {dim.name: dim for dim in spec.dims}
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
        "dims": [{"name": dim.name, "default": dim.default, "help": dim.help} for dim in spec.dims],
        "inputs": [_describe_tensor(config, tensor, dynamic) for tensor in spec.inputs],
        "outputs": [_describe_tensor(config, tensor, dynamic) for tensor in spec.outputs],
        "weights": [
            {"name": name, "shape": list(shape)} for name, shape in config.weight_shapes().items()
        ],
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
        ]
    )
    print_table(
        ("parameter", "type", "value", "default", "allowed", "help"),
        (
            (p["name"], p["type"], p["value"], p["default"], p["allowed"], p["help"])
            for p in description["params"]
        ),
        title="Parameters",
    )
    print_table(
        ("tensor", "kind", "dims (* dynamic)", "shape at defaults", "help"),
        (
            (t["name"], kind, t["dims_text"], t["shape"], t["help"])
            for kind in ("input", "output")
            for t in description[kind + "s"]
        ),
        title="Inputs and outputs",
    )
    print_table(
        ("weight", "shape"),
        ((w["name"], w["shape"]) for w in description["weights"]),
        title="Weights",
    )


def _describe_tensor(config: LayerConfig, tensor: Any, dynamic: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "dims": [{"name": dim, "dynamic": dim in dynamic} for dim in tensor.dims],
        "dims_text": " x ".join(f"{dim}*" if dim in dynamic else dim for dim in tensor.dims)
        + (" (optional: zeros)" if tensor.optional else ""),
        "shape": list(config.shape(tensor)),
        "optional": tensor.optional,
        "help": tensor.help,
    }


@cli.command(name="plugins")
@json_option
def plugins_(json_: bool) -> None:
    """List the loaded plugins, the layers each provides, and plugins that failed.

    \b
    Example:
      LAYERPORT_LOAD_PLUGINS='' layerport plugins
    """
    _State.warned = True  # the failures are this command's output, not a warning
    registry = get_registry()
    errors: dict[str, list[str]] = {}
    for failure in registry.failures:
        errors.setdefault(failure.plugin, []).append(failure.message)
    loaded = plugins.loaded_plugins()
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "version": info.version,
            "status": "failed" if info.name in errors else "ok",
            "error": "; ".join(errors.get(info.name, [])) or None,
            "layers": [layer.name for layer in registry if layer.plugin.name == info.name],
        }
        for info in loaded
    ]
    # Plugins that failed before they could register with pluggy at all.
    loaded_names = {info.name for info in loaded}
    rows += [
        {
            "name": name,
            "version": None,
            "status": "failed",
            "error": "; ".join(messages),
            "layers": [],
        }
        for name, messages in errors.items()
        if name not in loaded_names
    ]
    if json_:
        print_json({"plugins": rows, "warnings": plugins.warnings()})
        return
    print_table(
        ("plugin", "version", "layers", "status"),
        (
            (
                row["name"],
                row["version"],
                ", ".join(row["layers"]) or "-",
                row["status"] if row["status"] == "ok" else f"failed: {row['error']}",
            )
            for row in rows
        ),
    )
    for message in plugins.warnings():
        warn(message)


# ---------------------------------------------------------------------------
# run: one eager forward pass


@cli.command()
@click.argument("layer")
@layer_options
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=FILE.npy | FILE.npz",
    help="Read inputs from files instead of drawing them from the seed (repeatable).",
)
@output_option
@json_option
def run(
    layer: str,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
    inputs: Sequence[str],
    output: Path | None,
    json_: bool,
) -> None:
    """Run one eager forward pass and summarise each output.

    Without --input, inputs are drawn from a standard normal with --seed and
    optional inputs (such as the rnn's h0) are zeros.

    \b
    Examples:
      layerport run linear -p activation=sigmoid
      layerport run rnn --dim batch=2 --dim seq=100 --output out.npz
    """
    require_export_dependencies()
    from layerport.eager import prepare_inputs, run_eager
    from layerport.files import check_writable_target

    config = config_from_options(layer, params, dims, dtype, seed, weights)
    if output is not None:
        check_writable_target(output)
    config, arrays, notes = prepare_inputs(config, inputs, explicit_dims=parse_dim_sizes(dims))
    for note in notes:
        warn(note)
    outputs = run_eager(config, arrays)
    about = {
        "layer": config.layer.qualified_name,
        "params": dict(config.params),
        "dims": dict(config.dims),
        "dtype": config.dtype,
        "seed": config.seed,
    }
    report_outputs(outputs, output, json_, about)

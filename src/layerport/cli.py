"""The ``layerport`` command line.

Errors are mapped to exit codes here and nowhere else: ``UserInputError`` and
Click's usage errors exit 2, every other failure exits 1, and each prints one
``Error: ...`` line on stderr. ``--debug`` (or ``LAYERPORT_DEBUG=1``) shows the
traceback instead.

Commands that do not need torch (``list``, ``show``, ``plugins``, ``inspect``,
``infer`` and ``--help``) never import it: torch-dependent modules are imported
inside the commands that use them.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from layerport import __version__, noise, plugins
from layerport.config import LayerConfig, parse_assignments, parse_dim_sizes, resolve_config
from layerport.errors import LayerportError
from layerport.registry import Registry
from layerport.render import print_fields, print_json, print_table, warn
from layerport.spec import DEFAULT_DTYPE, DTYPES

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _State:
    debug = os.environ.get("LAYERPORT_DEBUG", "") not in ("", "0")
    warned = False


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _State.debug = True


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        noise.set_verbose(True)


_GLOBAL_FLAGS = (
    click.Option(
        ["--debug"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Show tracebacks, and re-raise plugin errors (also LAYERPORT_DEBUG=1).",
    ),
    click.Option(
        ["--verbose"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_verbose,
        help="Let dependencies' warnings and progress output through.",
    ),
)


class LayerportGroup(click.Group):
    """A group whose every command, plugin commands included, accepts --debug and --verbose."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(flag for flag in _GLOBAL_FLAGS if flag not in cmd.params)
        super().add_command(cmd, name)


@click.group(cls=LayerportGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="layerport")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show tracebacks on errors (also LAYERPORT_DEBUG=1).",
)
@click.option(
    "--verbose",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_verbose,
    help="Let dependencies' warnings and progress output through.",
)
def cli() -> None:
    """A registry of neural-network layer types, exported to ONNX and proven.

    \b
    Examples:
      layerport list
      layerport run rnn --dim seq=100
      layerport export --all
      layerport verify exported/rnn.onnx
    """


# ---------------------------------------------------------------------------
# Shared options and helpers


def json_option(function: F) -> F:
    return click.option("--json", "json_", is_flag=True, help="Print JSON instead of a table.")(
        function
    )


def layer_options(function: F) -> F:
    """-p, --dim, --dtype, --seed and --weights: how one layer is configured."""
    options = (
        click.option(
            "-p",
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help="Set a layer parameter (repeatable); see 'layerport show LAYER'.",
        ),
        click.option(
            "--dim",
            "dims",
            multiple=True,
            metavar="NAME=SIZE",
            help="Size of a dynamic dim, such as batch or seq (repeatable).",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPES),
            default=DEFAULT_DTYPE,
            show_default=True,
            help="Floating-point type of weights and inputs.",
        ),
        click.option(
            "--seed",
            type=click.IntRange(0, 2**63 - 1),
            default=0,
            show_default=True,
            help="Seeds the weights and any generated inputs.",
        ),
        click.option(
            "--weights",
            type=click.Path(path_type=Path),
            default=None,
            help="Load weights from a .safetensors or .pt/.pth state dict.",
        ),
    )
    for option in reversed(options):
        function = option(function)
    return function


def get_registry() -> Registry:
    """The registry, with plugin problems reported once per process on stderr."""
    registry = plugins.get_registry(strict=_State.debug)
    if not _State.warned:
        _State.warned = True
        for message in plugins.warnings():
            warn(message)
        for failure in registry.failures:
            warn(f"plugin {failure.plugin} is disabled: {failure.message}")
    return registry


def config_from_options(
    layer: str,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
) -> LayerConfig:
    return resolve_config(
        get_registry(),
        layer,
        params=parse_assignments(params, "-p"),
        dims=parse_dim_sizes(dims),
        dtype=dtype,
        seed=seed,
        weights=weights,
    )


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
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "version": info.version,
            "status": "ok",
            "layers": [layer.name for layer in registry if layer.plugin.name == info.name],
        }
        for info in plugins.loaded_plugins()
    ]
    rows += [
        {
            "name": failure.plugin,
            "version": None,
            "status": "failed",
            "error": failure.message,
            "layers": [],
        }
        for failure in registry.failures
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
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Save every output, under its own name, to an .npz file.",
)
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
    from layerport.eager import prepare_inputs, run_eager
    from layerport.files import check_writable_target

    config = config_from_options(layer, params, dims, dtype, seed, weights)
    if output is not None:
        check_writable_target(output)
    config, arrays, notes = prepare_inputs(config, inputs)
    for note in notes:
        warn(note)
    outputs = run_eager(config, arrays)
    _report_outputs(config, outputs, output, json_)


def _report_outputs(
    config: LayerConfig, outputs: dict[str, Any], output: Path | None, json_: bool
) -> None:
    from layerport.arrays import summarize
    from layerport.files import atomic_save_npz

    if output is not None:
        atomic_save_npz(output, outputs)
    summaries = {name: summarize(array) for name, array in outputs.items()}
    for name, summary in summaries.items():
        if summary["non_finite"]:
            warn(f"output {name} holds {summary['non_finite']} NaN or Inf values")
    if json_:
        print_json(
            {
                "layer": config.layer.qualified_name,
                "params": dict(config.params),
                "dims": dict(config.dims),
                "dtype": config.dtype,
                "seed": config.seed,
                "outputs": summaries,
                "saved_to": str(output) if output else None,
            }
        )
        return
    print_table(
        ("output", "shape", "dtype", "mean", "std", "min", "max"),
        (
            (name, s["shape"], s["dtype"], s["mean"], s["std"], s["min"], s["max"])
            for name, s in summaries.items()
        ),
    )
    if output is not None:
        click.echo(f"saved {', '.join(outputs)} to {output}", err=True)


# ---------------------------------------------------------------------------
# Entry point: the one place errors become exit codes


def _raise_keyboard_interrupt(signum: int, frame: Any) -> NoReturn:
    # SIGTERM takes the same path as Ctrl-C, so atomic writes clean up after themselves.
    raise KeyboardInterrupt


def _fail(message: str, exit_code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(exit_code)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI, turning every error into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Plugins load before Click parses the command line, and --debug must already
    # apply to them (it re-raises a broken plugin's error), so look for it by hand.
    options = args[: args.index("--")] if "--" in args else args
    _State.debug = _State.debug or "--debug" in options
    noise.set_verbose(os.environ.get("LAYERPORT_VERBOSE", "") not in ("", "0"))
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        plugins.load_plugin_commands(cli, strict=_State.debug)
        cli.main(args=args, prog_name="layerport", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        if _State.debug:
            raise
        _fail("interrupted", 130)
    except click.ClickException as error:
        if _State.debug:
            raise
        hint = ""
        if isinstance(error, click.UsageError) and error.ctx is not None:
            hint = f" (see '{error.ctx.command_path} --help')"
        _fail(_one_line(error.format_message()) + hint, error.exit_code)
    except LayerportError as error:
        if _State.debug:
            raise
        _fail(_one_line(str(error)), error.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as error:
        if _State.debug:
            raise
        _fail(
            f"internal error: {type(error).__name__}: {_one_line(str(error))} "
            "(run with --debug for the traceback, and please report it)",
            1,
        )

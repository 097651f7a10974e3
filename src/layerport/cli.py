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

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from layerport import __version__, noise, plugins
from layerport.config import LayerConfig, parse_assignments, parse_dim_sizes, resolve_config
from layerport.defaults import (
    DEFAULT_BENCH_THREADS,
    DEFAULT_OPSET,
    DEFAULT_TRIALS,
    OPTIMIZATION_LEVELS,
    SUPPORTED_OPSETS,
)
from layerport.errors import (
    BadFile,
    LayerportError,
    MissingDependency,
    VerificationFailed,
    WorkFailed,
    one_line,
)
from layerport.registry import RegisteredLayer, Registry
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
        name = name or cmd.name
        if name in self.commands:
            # A plugin must not silently replace a built-in command, or another plugin's.
            raise click.ClickException(f"a command named {name!r} already exists")
        cmd.params.extend(flag for flag in _GLOBAL_FLAGS if flag not in cmd.params)
        super().add_command(cmd, name)


@click.group(cls=LayerportGroup, context_settings=CONTEXT_SETTINGS, invoke_without_command=True)
@click.version_option(__version__, "-V", "--version", prog_name="layerport")
@click.pass_context
def cli(context: click.Context) -> None:
    """A registry of neural-network layer types, exported to ONNX and proven.

    \b
    Examples:
      layerport list
      layerport run rnn --dim seq=100
      layerport export --all
      layerport verify exported/rnn.onnx
    """
    if context.invoked_subcommand is None:
        click.echo(context.get_help())


cli.params.extend(_GLOBAL_FLAGS)


# ---------------------------------------------------------------------------
# Shared options and helpers


def option_group(description: str, *options: Callable[[F], F]) -> Callable[[F], F]:
    """Bundle options into one decorator, so a set that commands share is defined once."""

    def apply(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    apply.__doc__ = description
    return apply


def json_option(function: F) -> F:
    return click.option("--json", "json_", is_flag=True, help="Print JSON instead of a table.")(
        function
    )


layer_options = option_group(
    "-p, --dim, --dtype, --seed and --weights: how one layer is configured.",
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
        help="Load weights from a .safetensors file or a .pt/.pth/.bin state dict.",
    ),
)


def require_export_dependencies() -> None:
    """Fail with install advice, not an import error, where torch is not installed.

    ``find_spec`` looks for the packages without importing them.
    """
    import importlib.util

    missing = [name for name in ("torch", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependency(
            f"this command needs {' and '.join(missing)}, which this installation lacks "
            "(a runtime-only install runs infer, inspect, list, show and plugins); "
            "install the export extra: pip install -c constraints.txt 'layerport[export]'"
        )


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
    _report_outputs(outputs, output, json_, about)


def _report_outputs(
    outputs: dict[str, Any], output: Path | None, json_: bool, about: dict[str, Any]
) -> None:
    """Save outputs if asked, then summarise each; ``about`` says what produced them."""
    from layerport.arrays import summarize
    from layerport.files import atomic_save_npz

    if output is not None:
        atomic_save_npz(output, outputs)
    summaries = {name: summarize(array) for name, array in outputs.items()}
    for name, summary in summaries.items():
        if summary["non_finite"]:
            warn(f"output {name} holds {summary['non_finite']} NaN or Inf values")
    if json_:
        print_json({**about, "outputs": summaries, "saved_to": str(output) if output else None})
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


def _for_each_layer(
    what: str, work: Callable[[RegisteredLayer], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run ``work`` on every registered layer in one process, with progress on stderr.

    One layer's failure does not stop the rest: it becomes a row with its error.
    """
    from layerport.progress import progress_steps

    rows: list[dict[str, Any]] = []
    for layer in progress_steps(list(get_registry()), label=lambda layer: layer.name, what=what):
        try:
            rows.append({**work(layer), "status": "ok"})
        except LayerportError as error:
            if _State.debug:
                raise
            rows.append(
                {
                    "layer": layer.qualified_name,
                    "name": layer.name,
                    "status": "failed",
                    "error": one_line(str(error)),
                }
            )
    return rows


def _raise_if_any_failed(rows: list[dict[str, Any]]) -> None:
    failed = [row for row in rows if row.get("status") == "failed"]
    if failed:
        raise WorkFailed(
            f"{len(failed)} of {len(rows)} layers failed: "
            + "; ".join(f"{row['layer']}: {row['error']}" for row in failed)
        )


# ---------------------------------------------------------------------------
# export, verify, inspect, infer

DEFAULT_EXPORT_DIR = Path("exported")


verification_options = option_group(
    "--atol, --rtol, --trials and --report: how verification judges and reports.",
    click.option(
        "--atol",
        type=click.FloatRange(min=0),
        default=None,
        help="Absolute tolerance (default: the layer's, by dtype).",
    ),
    click.option(
        "--rtol",
        type=click.FloatRange(min=0),
        default=None,
        help="Relative tolerance (default: the layer's, by dtype).",
    ),
    click.option(
        "--trials",
        type=click.IntRange(1, 100),
        default=DEFAULT_TRIALS,
        show_default=True,
        help="Random input draws at each grid point.",
    ),
    click.option(
        "--report",
        "report_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Write a Markdown verification report to this file.",
    ),
)


def opset_option(function: F) -> F:
    from_opset, to_opset = SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1
    return click.option(
        "--opset",
        type=click.IntRange(from_opset, to_opset),
        default=DEFAULT_OPSET,
        show_default=True,
        help="ONNX opset to export to.",
    )(function)


def _tolerance(config: LayerConfig, atol: float | None, rtol: float | None) -> Any:
    from layerport.spec import Tolerance

    default = config.spec.tolerance(config.dtype)
    return Tolerance(
        atol=default.atol if atol is None else atol, rtol=default.rtol if rtol is None else rtol
    )


def _write_report(report: Any, path: Path | None) -> None:
    if report is not None and path is not None:
        from layerport.files import atomic_write_bytes

        atomic_write_bytes(path, report.to_markdown().encode())


def _export_summary(result: Any, path: Path | None) -> dict[str, Any]:
    report = result.report
    return {
        "layer": result.config.layer.qualified_name,
        "name": result.config.spec.name,
        "path": str(path) if path else None,
        "size": result.size,
        "weight_bytes": result.config.weight_bytes(),
        "nodes": result.node_count,
        "opset": result.record.opset,
        "dtype": result.config.dtype,
        "dynamic_dims": dict(result.config.dims),
        "verified": report is not None,
        "max_abs_error": report.max_abs_error() if report else None,
        "verification": report.summary() if report else None,
        "export_seconds": round(result.export_seconds, 3),
        "verify_seconds": round(result.verify_seconds, 3),
    }


def _print_export_summary(summary: dict[str, Any]) -> None:
    from layerport.limits import format_bytes

    verification = summary["verification"]
    if verification is None:
        verified = "not verified (--no-verify)"
    else:
        grid = ", ".join(f"{name} {sizes}" for name, sizes in verification["grid"].items())
        streaming = f"; streaming {verification['streaming']}" if verification["streaming"] else ""
        verified = (
            f"passed: max abs error {summary['max_abs_error']:.3g} over "
            f"{verification['cases']} cases ({grid}{streaming})"
        )
    print_fields(
        [
            ("exported", summary["path"] or "(not written)"),
            ("layer", summary["layer"]),
            (
                "size",
                f"{format_bytes(summary['size'])} ({format_bytes(summary['weight_bytes'])} of weights)",
            ),
            ("nodes", summary["nodes"]),
            ("opset", summary["opset"]),
            (
                "dynamic dims",
                ", ".join(f"{n} (traced at {s})" for n, s in summary["dynamic_dims"].items())
                or "none",
            ),
            ("verification", verified),
        ]
    )


def _default_export_path(layer: Any, registry: Registry, folder: Path) -> Path:
    clash = len(registry.providers(layer.name)) > 1
    return folder / (f"{layer.plugin.name}.{layer.name}.onnx" if clash else f"{layer.name}.onnx")


@cli.command()
@click.argument("layer", required=False)
@click.option("--all", "all_", is_flag=True, help="Export every registered layer at its defaults.")
@layer_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="File to write (default exported/LAYER.onnx); with --all, the folder.",
)
@opset_option
@click.option("--no-verify", is_flag=True, help="Skip verification against eager PyTorch.")
@verification_options
@json_option
@click.pass_context
def export(
    ctx: click.Context,
    layer: str | None,
    all_: bool,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
    output: Path | None,
    opset: int,
    no_verify: bool,
    atol: float | None,
    rtol: float | None,
    trials: int,
    report_path: Path | None,
    json_: bool,
) -> None:
    """Export a layer to ONNX, then verify it against eager PyTorch.

    Every dynamic dim stays symbolic in the file. Verification runs onnxruntime and
    eager PyTorch over a grid of sizes (1, the traced size, and a larger one per
    dynamic dim) and exits 1 on any mismatch; a file that fails is not written.

    \b
    Examples:
      layerport export rnn
      layerport export linear -p activation=sigmoid -o classifier.onnx
      layerport export --all -o exported/
    """
    require_export_dependencies()
    from layerport.export import export_layer

    if no_verify:
        for name in ("atol", "rtol", "trials", "report_path"):
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                option = "--report" if name == "report_path" else f"--{name}"
                raise click.UsageError(f"{option} applies to verification; drop it or --no-verify")
    if all_:
        if layer or params or dims or weights or report_path:
            raise click.UsageError(
                "--all exports every layer at its defaults; drop LAYER, -p, --dim, --weights and --report"
            )
        _export_all(
            output or DEFAULT_EXPORT_DIR,
            dtype,
            seed,
            opset,
            not no_verify,
            atol,
            rtol,
            trials,
            json_,
        )
        return
    if not layer:
        raise click.UsageError("give a LAYER to export, or --all")
    config = config_from_options(layer, params, dims, dtype, seed, weights)
    if output is None:
        _check_export_folder(DEFAULT_EXPORT_DIR)
        output = _default_export_path(config.layer, get_registry(), DEFAULT_EXPORT_DIR)
    from layerport.files import check_writable_target

    check_writable_target(output)
    if report_path is not None:
        check_writable_target(report_path)
    try:
        result = export_layer(
            config,
            opset=opset,
            verify=not no_verify,
            tolerance=_tolerance(config, atol, rtol),
            trials=trials,
        )
    except VerificationFailed as failure:
        _write_report(failure.report, report_path)
        raise
    result.write(output)
    _write_report(result.report, report_path)
    summary = _export_summary(result, output)
    if json_:
        print_json(summary)
    else:
        _print_export_summary(summary)


def _check_export_folder(folder: Path) -> None:
    """An output folder must exist; only the default ``exported/`` is created on demand."""
    if folder.exists() and not folder.is_dir():
        raise BadFile(f"{folder} is not a folder; exports are written into a folder")
    if not folder.exists():
        if folder != DEFAULT_EXPORT_DIR:
            raise BadFile(f"output folder {folder} does not exist")
        folder.mkdir()


def _export_all(
    folder: Path,
    dtype: str,
    seed: int,
    opset: int,
    verify: bool,
    atol: float | None,
    rtol: float | None,
    trials: int,
    json_: bool,
) -> None:
    """Export every registered layer in one process; one failure does not stop the rest."""
    from layerport.export import export_layer
    from layerport.limits import format_bytes

    registry = get_registry()
    _check_export_folder(folder)

    def export_one(layer: RegisteredLayer) -> dict[str, Any]:
        path = _default_export_path(layer, registry, folder)
        config = resolve_config(registry, layer.qualified_name, dtype=dtype, seed=seed)
        tolerance = _tolerance(config, atol, rtol)
        result = export_layer(
            config, opset=opset, verify=verify, tolerance=tolerance, trials=trials
        )
        result.write(path)
        return _export_summary(result, path)

    rows = _for_each_layer("exporting", export_one)
    if json_:
        print_json(rows)
    else:
        print_table(
            ("layer", "file", "size", "nodes", "dynamic dims", "max abs error", "time", "status"),
            (
                (
                    row["name"],
                    row.get("path"),
                    format_bytes(row["size"]) if "size" in row else None,
                    row.get("nodes"),
                    ", ".join(row.get("dynamic_dims", {})) or None,
                    row.get("max_abs_error"),
                    f"{row['export_seconds'] + row['verify_seconds']:.1f} s"
                    if "export_seconds" in row
                    else None,
                    row["status"] if row["status"] == "ok" else f"failed: {row['error']}",
                )
                for row in rows
            ),
        )
    _raise_if_any_failed(rows)


@cli.command()
@click.argument("target")
@layer_options
@opset_option
@verification_options
@json_option
@click.pass_context
def verify(
    ctx: click.Context,
    target: str,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
    opset: int,
    atol: float | None,
    rtol: float | None,
    trials: int,
    report_path: Path | None,
    json_: bool,
) -> None:
    """Check that an export computes what eager PyTorch computes, at every size.

    TARGET is a layer name (exported in memory, then checked) or an .onnx file,
    whose recorded configuration rebuilds the eager layer (add --weights if it was
    exported from a weights file). Exits 1 on any mismatch, NaN, pinned dim, or
    shape or dtype difference.

    \b
    Examples:
      layerport verify rnn --dim seq=64
      layerport verify exported/rnn.onnx --trials 5 --report report.md
    """
    from layerport.files import check_writable_target

    if report_path is not None:
        check_writable_target(report_path)
    # Layer names never contain "." or "/", so anything that does is a file; a
    # stray file named like a layer must not hijack the layer.
    if any(character in target for character in (".", "/", os.sep)):
        for name in ("params", "dtype", "seed", "opset"):
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                option = {"params": "-p", "dtype": "--dtype", "seed": "--seed", "opset": "--opset"}[
                    name
                ]
                raise click.UsageError(
                    f"{option} does not apply to a file: it records its own configuration"
                )
        report, path = _verify_file(Path(target), weights, dims, atol, rtol, trials), target
    else:
        require_export_dependencies()
        from layerport.export import export_layer

        config = config_from_options(target, params, dims, dtype, seed, weights)
        try:
            result = export_layer(
                config, opset=opset, tolerance=_tolerance(config, atol, rtol), trials=trials
            )
        except VerificationFailed as failure:
            _write_report(failure.report, report_path)
            raise
        report, path = result.report, None
    _write_report(report, report_path)
    if not report.passed:
        raise VerificationFailed(report.failure_message(), report=report)
    _print_verification(report, path, json_)


def _verify_file(
    path: Path,
    weights: Path | None,
    dims: Sequence[str],
    atol: float | None,
    rtol: float | None,
    trials: int,
) -> Any:
    require_export_dependencies()
    from layerport.build import build_module
    from layerport.config import config_from_record
    from layerport.runtime import load_model
    from layerport.verify import verify_export

    model = load_model(path)
    if model.record is None:
        raise BadFile(
            f"{path} was not exported by layerport (it has no layerport metadata), so "
            "verify cannot rebuild its layer; 'layerport inspect' and 'infer' still work on it"
        )
    config = config_from_record(
        get_registry(), model.record, weights=weights, dims=parse_dim_sizes(dims)
    )
    module = build_module(config)
    return verify_export(
        config, module, model, config.dims, tolerance=_tolerance(config, atol, rtol), trials=trials
    )


def _print_verification(report: Any, path: str | None, json_: bool) -> None:
    if json_:
        print_json({"target": path or report.layer, **report.summary(), "worst": report.worst()})
        return
    summary = report.summary()
    print_fields(
        [
            ("verified", path or report.layer),
            (
                "result",
                f"passed: {summary['cases']} cases, atol {summary['atol']:g}, rtol {summary['rtol']:g}",
            ),
            ("grid", ", ".join(f"{n} {s}" for n, s in summary["grid"].items()) or "fixed shape"),
            ("streaming", summary["streaming"] or "not applicable"),
        ]
    )
    print_table(
        ("output", "max abs error", "max rel error", "worst case"),
        (
            (name, worst["max_abs_error"], worst["max_rel_error"], worst["case"])
            for name, worst in report.worst().items()
        ),
    )


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def inspect(file: Path, json_: bool) -> None:
    """Describe any ONNX file: opset, inputs and outputs, ops, size, layerport metadata.

    \b
    Example:
      layerport inspect exported/rnn.onnx
    """
    from layerport.inspection import describe_model
    from layerport.limits import format_bytes

    description = describe_model(file)
    if json_:
        print_json(description)
        return
    print_fields(
        [
            ("file", description["path"]),
            (
                "size",
                f"{format_bytes(description['size'])} ({format_bytes(description['weight_bytes'])} "
                f"in {description['initializers']} initializers)",
            ),
            ("ir version", description["ir_version"]),
            ("opsets", ", ".join(f"{d} {v}" for d, v in description["opsets"].items())),
            ("producer", description["producer"] or "-"),
            (
                "nodes",
                f"{description['nodes']}: "
                + ", ".join(f"{op} {n}" for op, n in description["ops"].items()),
            ),
        ]
    )
    print_table(
        ("tensor", "kind", "dtype", "dims (* symbolic)"),
        (
            (
                value["name"] + (" (optional)" if value["optional"] else ""),
                kind,
                value["dtype"],
                " x ".join(
                    f"{d['name']}*" if d["symbolic"] else str(d["size"]) for d in value["dims"]
                ),
            )
            for kind in ("input", "output")
            for value in description[kind + "s"]
        ),
    )
    metadata = description["layerport"] or {}
    if metadata:
        rows = (
            (key, v if isinstance(v, str) else json.dumps(v, sort_keys=True))
            for key, v in metadata.items()
        )
        print_table(("layerport metadata", "value"), sorted(rows))
    else:
        click.echo("not exported by layerport (no layerport metadata)")


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=FILE.npy | FILE.npz",
    help="Read inputs from files (repeatable). Without it, inputs are drawn from --seed "
    "at the file's traced sizes, as 'layerport run' draws them.",
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=SIZE",
    help="With generated inputs: the size of a symbolic dim (repeatable).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=None,
    help="With generated inputs: their seed (default: the file's).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Save every output, under its own name, to an .npz file.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="onnxruntime intra-op threads; 0 uses every core.",
)
@click.option(
    "--optimization",
    type=click.Choice(OPTIMIZATION_LEVELS),
    default="all",
    show_default=True,
    help="onnxruntime graph optimization level.",
)
@json_option
def infer(
    file: Path,
    inputs: Sequence[str],
    dims: Sequence[str],
    seed: int | None,
    output: Path | None,
    threads: int,
    optimization: str,
    json_: bool,
) -> None:
    """Run an ONNX file in onnxruntime, without torch.

    Optional inputs that the file's layerport metadata lists (such as the rnn's
    h0) may be left out; they are zeros.

    \b
    Examples:
      layerport infer exported/rnn.onnx
      layerport infer exported/rnn.onnx --input x=x.npy --output out.npz
    """
    from layerport.arrays import read_input_files
    from layerport.files import check_writable_target
    from layerport.runtime import SessionSettings, generated_inputs, load_model

    if output is not None:
        check_writable_target(output)
    model = load_model(file, SessionSettings(threads=threads, optimization=optimization))
    if inputs:
        if dims or seed is not None:
            raise click.UsageError(
                "--dim and --seed apply to generated inputs; drop them with --input"
            )
        arrays = read_input_files(inputs)
    else:
        arrays = generated_inputs(model, parse_dim_sizes(dims), seed)
    complete, notes = model.check_inputs(arrays)
    for note in notes:
        warn(note)
    outputs = model.run_checked(complete)
    _report_outputs(
        outputs, output, json_, {"file": str(file), "inputs": "files" if inputs else "generated"}
    )


# ---------------------------------------------------------------------------
# bench: eager PyTorch against the export in onnxruntime


@cli.command()
@click.argument("layer", required=False)
@click.option(
    "--all", "all_", is_flag=True, help="Benchmark every registered layer at its defaults."
)
@layer_options
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=DEFAULT_BENCH_THREADS,
    show_default=True,
    help="Intra-op threads for torch and onnxruntime alike.",
)
@click.option(
    "--min-time",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Time each engine at least this long (and at least 30 calls).",
)
@click.option(
    "--startup",
    is_flag=True,
    help="Also time 'layerport --help' against 'python -c \"import torch\"' (5 runs each).",
)
@json_option
def bench(
    layer: str | None,
    all_: bool,
    params: Sequence[str],
    dims: Sequence[str],
    dtype: str,
    seed: int,
    weights: Path | None,
    threads: int,
    min_time: float,
    startup: bool,
    json_: bool,
) -> None:
    """Time eager PyTorch against the exported model in onnxruntime.

    Exports the layer (without verification; the engines' outputs on the
    benchmark inputs are checked against eager instead), then times the layer's
    eager module, the layer's reference implementation if it declares one (for
    the rnn: torch.nn.RNN + nn.Linear with the same weights) and onnxruntime, on
    the same inputs and thread count. Engines take turns in short blocks, so a
    busy machine slows them alike; the ratio column is onnxruntime's median
    latency over each engine's (below 1: onnxruntime is faster).

    \b
    Examples:
      layerport bench rnn --dim batch=64 --dim seq=256
      layerport bench linear -p in_features=4096 -p out_features=4096 --dim batch=64
      layerport bench --all --startup --json
    """
    require_export_dependencies()
    from layerport.bench import TimingSettings, bench_layer, measure_startup

    if all_ and (layer or params or dims or weights):
        raise click.UsageError(
            "--all benchmarks every layer at its defaults; drop LAYER, -p, --dim and --weights"
        )
    if not (layer or all_ or startup):
        raise click.UsageError("give a LAYER to benchmark, --all, or --startup")
    timing = TimingSettings(min_seconds=min_time)
    rows: list[dict[str, Any]] = []
    if all_:
        rows = _bench_all(dtype, seed, threads, timing)
    elif layer:
        config = config_from_options(layer, params, dims, dtype, seed, weights)
        rows = [bench_layer(config, threads=threads, timing=timing).to_dict()]
    startup_times = measure_startup().to_dict() if startup else None
    for note in dict.fromkeys(note for row in rows for note in row.get("notes", [])):
        warn(note)
    if json_:
        if all_:
            print_json({"layers": rows, "startup": startup_times})
        elif rows:
            print_json({**rows[0], **({"startup": startup_times} if startup else {})})
        else:
            print_json({"startup": startup_times})
    else:
        _print_bench(rows, startup_times, all_)
    _raise_if_any_failed(rows)


def _bench_all(dtype: str, seed: int, threads: int, timing: Any) -> list[dict[str, Any]]:
    from layerport.bench import bench_layer

    def bench_one(layer: RegisteredLayer) -> dict[str, Any]:
        config = resolve_config(get_registry(), layer.qualified_name, dtype=dtype, seed=seed)
        return bench_layer(config, threads=threads, timing=timing).to_dict()

    return _for_each_layer("benchmarking", bench_one)


def _print_bench(rows: list[dict[str, Any]], startup: dict[str, Any] | None, all_: bool) -> None:
    from layerport.limits import format_bytes

    if len(rows) == 1 and not all_:
        row = rows[0]
        print_fields(
            [
                ("layer", row["layer"]),
                ("params", ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"),
                ("dims", ", ".join(f"{k}={v}" for k, v in row["dims"].items()) or "-"),
                ("dtype", row["dtype"]),
                (
                    "threads",
                    f"torch {row['threads']['torch']}, onnxruntime {row['threads']['onnxruntime']}",
                ),
                (
                    "export",
                    f"{row['export_seconds']:.2f} s, {format_bytes(row['file_bytes'])}, "
                    f"{row['nodes']} nodes",
                ),
            ]
        )
    if rows:
        columns = ("engine", "median ms", "p10 ms", "p90 ms", "calls", "calls/s", "samples/s")
        print_table(
            (*(("layer",) if all_ else ()), *columns, "GFLOP/s", "ort/engine"),
            _bench_table_rows(rows, all_),
        )
    if startup is not None:
        print_fields(
            [
                (
                    "startup",
                    f"layerport --help {startup['layerport_help_seconds']:.3f} s, import torch "
                    f"{startup['import_torch_seconds']:.3f} s: ratio {startup['ratio']:.3f} "
                    f"(median of {startup['runs']})",
                )
            ]
        )


def _bench_table_rows(rows: list[dict[str, Any]], all_: bool) -> list[tuple[object, ...]]:
    """One row per layer and engine; the last column is onnxruntime's latency over the engine's."""
    table: list[tuple[object, ...]] = []
    for row in rows:
        first = (row["name"],) if all_ else ()
        if row.get("status") == "failed":
            table.append((*first, *[None] * 8, f"failed: {row['error']}"))
            continue
        for name, engine in row["engines"].items():
            table.append(
                (
                    *first,
                    name,
                    engine["median_ms"],
                    engine["p10_ms"],
                    engine["p90_ms"],
                    engine["calls"],
                    engine["calls_per_s"],
                    engine["samples_per_s"],
                    engine["gflops"],
                    row["ratios"].get(f"onnxruntime_over_{name}"),
                )
            )
    return table


# ---------------------------------------------------------------------------
# Entry point: the one place errors become exit codes


def _raise_keyboard_interrupt(signum: int, frame: Any) -> NoReturn:
    # SIGTERM takes the same path as Ctrl-C, so atomic writes clean up after themselves.
    raise KeyboardInterrupt


def _fail(message: str, exit_code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(exit_code)


def _caused_by_interrupt(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


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
        # Not cli.main(): on Ctrl-C it prints a blank line of its own before raising.
        with cli.make_context("layerport", args) as context:
            cli.invoke(context)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except (Exception, KeyboardInterrupt) as error:
        message, exit_code = _describe_failure(error)
        if _State.debug:
            # The traceback for bug reports, and the same exit code for scripts.
            traceback.print_exc()
        _fail(message, exit_code)


def _describe_failure(error: BaseException) -> tuple[str, int]:
    """The one-line message and exit code for any error that reaches the top."""
    if isinstance(error, (KeyboardInterrupt, click.exceptions.Abort)) or _caused_by_interrupt(
        error
    ):
        # Ctrl-C inside torch.export or a C extension's import comes back wrapped.
        return "interrupted", 130
    if isinstance(error, click.ClickException):
        hint = ""
        if isinstance(error, click.UsageError) and error.ctx is not None:
            hint = f" (see '{error.ctx.command_path} --help')"
        return one_line(error.format_message()) + hint, error.exit_code
    if isinstance(error, LayerportError):
        return one_line(str(error), limit=2000), error.exit_code
    return (
        f"internal error: {type(error).__name__}: {one_line(str(error))} "
        "(run with --debug for the traceback, and please report it)",
        1,
    )

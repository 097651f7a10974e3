"""The ``layerport`` command group, its shared options, and the entry point.

Errors are mapped to exit codes here and nowhere else: ``UserInputError`` and
Click's usage errors exit 2, every other failure exits 1, and each prints one
``Error: ...`` line on stderr; an interrupt exits 130. ``--debug`` (or
``LAYERPORT_DEBUG=1``) prints the traceback first and keeps the exit code.

Commands that do not need torch (``list``, ``show``, ``plugins``, ``inspect``,
``infer`` and ``--help``) never import it: torch-dependent modules are imported
inside the commands that use them.
"""

from __future__ import annotations

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
from layerport.errors import (
    LayerportError,
    MissingDependency,
    WorkFailed,
    one_line,
)
from layerport.registry import RegisteredLayer, Registry
from layerport.render import print_json, print_table, warn
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


output_option = click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Save every output, under its own name, to an .npz file.",
)


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


def report_outputs(
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


def for_each_layer(
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


def raise_if_any_failed(rows: list[dict[str, Any]]) -> None:
    failed = [row for row in rows if row.get("status") == "failed"]
    if failed:
        raise WorkFailed(
            f"{len(failed)} of {len(rows)} layers failed: "
            + "; ".join(f"{row['layer']}: {row['error']}" for row in failed)
        )


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

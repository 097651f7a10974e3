"""The ``layerport`` command group, what every command needs, and the entry point.

Errors are mapped to exit codes here and nowhere else: ``UserInputError`` and
Click's usage errors exit 2, every other failure exits 1, and each prints one
``Error: ...`` line on stderr; an interrupt exits 130. ``--debug`` (or
``LAYERPORT_DEBUG=1``) prints the traceback first and keeps the exit code.

Library errors give their advice as ``Setting``s; ``flag_words`` names each
one's flag here, so library code never names a CLI flag.

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
from typing import Any, NoReturn

import click

from layerport import __version__, plugins
from layerport.cli.options import LayerOptions
from layerport.cli.outcomes import LayerOutcome
from layerport.cli.output import Progress, note, warn
from layerport.config import LayerConfig, resolve_config
from layerport.errors import LayerportError, MissingDependency, Setting, WorkFailed, one_line
from layerport.registry import RegisteredLayer, Registry
from layerport.runtime import noise

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


_GLOBAL_FLAGS = tuple(
    click.Option([flag], is_flag=True, expose_value=False, is_eager=True, callback=set_, help=help)
    for flag, set_, help in (
        (
            "--debug",
            _set_debug,
            "Show tracebacks, and re-raise plugin errors (also LAYERPORT_DEBUG=1).",
        ),
        ("--verbose", _set_verbose, "Let dependencies' warnings and progress output through."),
    )
)


class LayerportGroup(click.Group):
    """A group whose every command, plugin commands included, accepts --debug and --verbose.

    Its commands, the built-in ones too, come from the ``register_commands`` hook,
    loaded the first time a command is looked up.
    """

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        plugins.load_plugin_commands(self, strict=_State.debug)
        return super().list_commands(ctx)  # type: ignore[arg-type]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        plugins.load_plugin_commands(self, strict=_State.debug)
        return super().get_command(ctx, cmd_name)

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
# What every command needs


# The commands that never import torch (tests/test_torch_free.py runs each; docs/deploying.md).
TORCH_FREE_COMMANDS = (
    "infer",
    "inspect",
    "generate",
    "list",
    "show",
    "plugins",
    "targets",
    "serve",
)


def require_dependencies(*names: str) -> None:
    """Fail with install advice, not an import error, where a package is not installed.

    ``find_spec`` looks for the packages without importing them.
    """
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependency(
            f"this command needs {' and '.join(missing)}, which this installation lacks "
            f"(a runtime-only install runs {', '.join(TORCH_FREE_COMMANDS[:-1])} and "
            f"{TORCH_FREE_COMMANDS[-1]}); "
            "install the export extra: pip install -c constraints.txt 'layerport[export]'"
        )


def get_registry() -> Registry:
    """The registry, with plugin problems reported once per process on stderr."""
    registry = plugins.get_registry(strict=_State.debug)
    _report_plugin_problems(registry)
    return registry


def _report_plugin_problems(registry: Registry) -> None:
    if not _State.warned:
        _State.warned = True
        for message in plugins.warnings():
            warn(message)
        reported: set[str] = set()
        for failure in registry.failures:
            message = f"plugin {failure.plugin} is disabled: {failure.message}"
            if message not in reported:  # aliases of one broken module fail alike
                reported.add(message)
                warn(message)


def resolve_layer(name: str, options: LayerOptions) -> LayerConfig:
    """The configuration a command's LAYER argument and layer options ask for."""
    config = resolve_config(
        get_registry(),
        name,
        params=options.params,
        dims=options.dims,
        dtype=options.dtype,
        seed=options.seed,
        weights=options.weights,
        weights_prefix=options.weights_prefix,
    )
    for message in config.notes:
        note(message)
    return config


def for_each_layer(
    what: str, work: Callable[[RegisteredLayer], LayerOutcome], *, dtype: str | None = None
) -> list[LayerOutcome]:
    """Run ``work`` on every registered layer in one process, with progress on stderr.

    One layer's failure does not stop the rest: it becomes an outcome with its
    error. With a ``dtype``, layers that do not support it are skipped, with a note.
    """
    outcomes: list[LayerOutcome] = []
    layers = []
    for layer in get_registry():
        if dtype is None or dtype in layer.spec.precisions:
            layers.append(layer)
        else:
            note(
                f"skipping {layer.name}: it supports {', '.join(layer.spec.precisions)}, not {dtype}"
            )
    with Progress(len(layers), what) as progress:
        for layer in layers:
            progress.start(layer.name)
            try:
                outcomes.append(work(layer))
            except LayerportError as error:
                if _State.debug:
                    raise
                outcomes.append(LayerOutcome(layer, error=one_line(render_error(error))))
            progress.finish(ok=outcomes[-1].error is None)
    return outcomes


def raise_if_any_failed(outcomes: list[LayerOutcome], json_: bool) -> None:
    """Fail the command if any layer failed, in one bounded line.

    The output above already holds every layer's whole error, so the line names
    the first few failures briefly and points there for the rest.
    """
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    if not failed:
        return
    shown = "; ".join(
        f"{outcome.layer.qualified_name}: {one_line(outcome.error, limit=120)}"
        for outcome in failed[:2]
    )
    more = f"; and {len(failed) - 2} more" if len(failed) > 2 else ""
    where = "the JSON above" if json_ else "the table above"
    raise WorkFailed(
        f"{len(failed)} of {len(outcomes)} layers failed: {shown}{more} ({where} has each error)"
    )


# The flag that sets each Setting a library error may advise (see errors.Setting).
FLAGS = {
    "params": "-p",
    "dims": "--dim",
    "dtype": "--dtype",
    "weights": "--weights",
    "inputs": "--input",
    "threads": "--threads",
    "optimization": "--optimization",
    "weights_prefix": "--weights-prefix",
    "runtime": "--runtime",
    "target": "--target",
    "target_options": "--target-option",
}


def flag_words(setting: Setting) -> str:
    """A library error's advice in command-line words: ``-p input_size=SIZE``."""
    flag = FLAGS.get(setting.name, setting.name)
    return " ".join(f"{flag} {example}" for example in setting.examples()) or flag


def render_error(error: LayerportError) -> str:
    return error.render(flag_words)


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
        return one_line(render_error(error), limit=2000), error.exit_code
    return (
        f"internal error: {type(error).__name__}: {one_line(str(error))} "
        "(run with --debug for the traceback, and please report it)",
        1,
    )

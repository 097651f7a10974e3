"""The options commands share, each defined once, in one idiom.

Each option is a decorator made by ``click.option``; a set that several commands
take together is one decorator (``layer_options``). Options that take
``KEY=VALUE`` or ``NAME=FILE`` are parsed here, by their callbacks, so library
functions receive dicts and paths, never command-line strings.

``layer_options`` collects ``-p``, ``--dim``, ``--dtype``, ``--seed`` and
``--weights`` into one ``LayerOptions`` argument, and ``verification_options``
collects ``--atol``, ``--rtol``, ``--trials`` and ``--report`` into one
``VerificationOptions``, so that commands do not pass values around positionally.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from layerport.dtypes import DEFAULT_DTYPE, DTYPES
from layerport.errors import InvalidDim, UserInputError
from layerport.export import DEFAULT_OPSET, SUPPORTED_OPSETS
from layerport.verify import DEFAULT_TRIALS

F = TypeVar("F", bound=Callable[..., Any])


def _assignments(
    what: str, form: str = "KEY=VALUE"
) -> Callable[[click.Context, click.Parameter, Sequence[str]], dict]:
    """A callback that splits repeated ``KEY=VALUE`` options into a dict; ``form`` words them."""

    def parse(context: click.Context, parameter: click.Parameter, pairs: Sequence[str]) -> dict:
        parsed: dict[str, str] = {}
        for pair in pairs:
            key, separator, value = pair.partition("=")
            if not separator or not key.strip():
                raise UserInputError(f"{what} expects {form}, got {pair!r}")
            if key.strip() in parsed:
                raise UserInputError(f"{what} {key.strip()} is given twice")
            parsed[key.strip()] = value.strip()
        return parsed

    return parse


def _dim_sizes(context: click.Context, parameter: click.Parameter, pairs: Sequence[str]) -> dict:
    sizes: dict[str, int] = {}
    for name, text in _assignments("--dim", "NAME=SIZE")(context, parameter, pairs).items():
        try:
            sizes[name] = int(text)
        except ValueError:
            raise InvalidDim(f"dim {name} must be an integer >= 1, got {text!r}") from None
        # 0 is the layer's to refuse: a KV cache's past may be empty (Dim.min_size).
        if sizes[name] < 0:
            raise InvalidDim(f"dim {name} must be an integer >= 1, got {sizes[name]}")
    return sizes


def _weights_prefix(
    context: click.Context, parameter: click.Parameter, options: Sequence[str]
) -> str | dict[str, str] | None:
    """One ``PREFIX``, or ``PART=PREFIX`` once per weight part (as a dict)."""
    if not options:
        return None
    if len(options) == 1 and "=" not in options[0]:
        return options[0]
    if any("=" not in option for option in options):
        raise UserInputError(
            "--weights-prefix takes one PREFIX, or PART=PREFIX for each weight part "
            f"(see 'layerport show LAYER'), got {' '.join(options)!r}"
        )
    return _assignments("--weights-prefix", "PART=PREFIX")(context, parameter, options)


def _input_sources(
    context: click.Context, parameter: click.Parameter, options: Sequence[str]
) -> list[tuple[str | None, Path]]:
    """``NAME=FILE.npy`` as ``(NAME, path)``; ``FILE.npz`` as ``(None, path)``."""
    sources: list[tuple[str | None, Path]] = []
    for option in options:
        name, separator, filename = option.partition("=")
        sources.append((name.strip(), Path(filename)) if separator else (None, Path(option)))
    return sources


def _repeatable(flags: tuple[str, ...], metavar: str, callback: Any, help: str) -> Any:
    """An option given any number of times, parsed as a whole by ``callback``."""
    return click.option(*flags, multiple=True, metavar=metavar, callback=callback, help=help)


params_option = _repeatable(
    ("-p", "--param", "params"),
    "KEY=VALUE",
    _assignments("-p"),
    "Set a layer parameter (repeatable); see 'layerport show LAYER'.",
)
dim_option = _repeatable(
    ("--dim", "dims"),
    "NAME=SIZE",
    _dim_sizes,
    "Size of a dynamic dim, such as batch or seq (repeatable).",
)
input_option = _repeatable(
    ("--input", "inputs"),
    "NAME=FILE.npy | FILE.npz",
    _input_sources,
    "Read inputs from files instead of drawing them from the seed (repeatable).",
)
output_option = click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Save every output, under its own name, to an .npz file.",
)
json_option = click.option("--json", "json_", is_flag=True, help="Print JSON instead of a table.")


def seed_option(default: int | None, help: str) -> Callable[[F], F]:
    return click.option(
        "--seed",
        type=click.IntRange(0, 2**63 - 1),
        default=default,
        show_default=default is not None,
        help=help,
    )


def threads_option(default: int, minimum: int, help: str) -> Callable[[F], F]:
    return click.option(
        "--threads",
        type=click.IntRange(min=minimum),
        default=default,
        show_default=True,
        help=help,
    )


opset_option = click.option(
    "--opset",
    type=click.IntRange(SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1),
    default=DEFAULT_OPSET,
    show_default=True,
    help="ONNX opset to export to.",
)


weights_option = click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Load weights from a .safetensors file, a .pt/.pth/.bin state dict or training "
    "checkpoint, a TorchScript archive (its code is never run) or an .npz archive (a model "
    "file's layers select theirs from it).",
)


def option_group(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Bundle options into one decorator, so a set that commands share is defined once."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


@dataclass(frozen=True)
class LayerOptions:
    """How one layer is configured on the command line, parsed but not yet checked."""

    params: dict[str, str]
    dims: dict[str, int]
    dtypes: tuple[str, ...]  # every --dtype given; only bench compares several
    seed: int
    weights: Path | None
    weights_prefix: str | dict[str, str] | None

    @property
    def dtype(self) -> str | None:
        """The one ``--dtype`` given, or ``None``; ``UsageError`` when given more than once."""
        if len(self.dtypes) > 1:
            raise click.UsageError(
                "--dtype is given more than once; only 'layerport bench' compares precisions"
            )
        return self.dtypes[0] if self.dtypes else None

    def given(self) -> bool:
        """Whether any of -p, --dim or --weights was given (``--all`` takes none)."""
        return bool(self.params or self.dims or self.weights or self.weights_prefix)


def collected(into: type, argument: str, *decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Options whose values reach the command as one ``into`` dataclass, named ``argument``."""
    names = [item.name for item in dataclasses.fields(into)]

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def collect(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return function(*args, **{argument: into(**values)}, **kwargs)

        return option_group(*decorators)(collect)  # type: ignore[arg-type]

    return decorate


layer_options = collected(
    LayerOptions,
    "layer_options",
    params_option,
    dim_option,
    click.option(
        "--dtype",
        "dtypes",
        type=click.Choice(DTYPES),
        multiple=True,
        help="Floating-point type of weights and inputs (default: the weights' own, else "
        f"{DEFAULT_DTYPE}); weights of another dtype are converted. bench takes several, "
        "to compare precisions.",
    ),
    seed_option(0, "Seeds the weights and any generated inputs."),
    weights_option,
    _repeatable(
        ("--weights-prefix", "weights_prefix"),
        "PREFIX",
        _weights_prefix,
        "With --weights: use only the tensors under PREFIX (such as encoder.lstm.), "
        "stripped of it; or PART=PREFIX, once per weight part of the layer "
        "(see 'layerport show LAYER').",
    ),
)


@dataclass(frozen=True)
class VerificationOptions:
    """How verification judges and reports, from the command line."""

    atol: float | None
    rtol: float | None
    trials: int
    report_path: Path | None


verification_options = collected(
    VerificationOptions,
    "verification",
    click.option(
        "--atol",
        type=click.FloatRange(min=0),
        default=None,
        help="Absolute tolerance, element by element against eager in the same precision "
        "(default: float files are judged against float64 eager; see the README's Verification).",
    ),
    click.option(
        "--rtol",
        type=click.FloatRange(min=0),
        default=None,
        help="Relative tolerance, as --atol (default: the layer's, by dtype).",
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


target_options = option_group(
    click.option(
        "--target",
        default="onnx",
        show_default=True,
        metavar="NAME",
        help="Export target: how and where the file is written (see 'layerport targets').",
    ),
    _repeatable(
        ("--target-option", "target_settings"),
        "KEY=VALUE",
        _assignments("--target-option"),
        "Set an option of the export target (repeatable).",
    ),
)


def given_explicitly(context: click.Context, *names: str) -> list[str]:
    """Which of the named parameters the user gave, rather than left at their defaults."""
    return [
        name
        for name in names
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]


# What export and verify share: how the layer is configured, exported and judged.
export_options = option_group(layer_options, opset_option, verification_options)

"""The hooks a layerport plugin can implement.

Each hookspec's docstring is its reference documentation; the README's
"Plugin hooks" section repeats it with an example, and a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    import click

    from layerport.spec import LayerSpec
    from layerport.targets import ExportTarget

hookspec = HookspecMarker("layerport")
hookimpl = HookimplMarker("layerport")


@hookspec
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    """Register layer types: call ``register(spec)`` once for each ``LayerSpec`` you provide.

    Keep this hook cheap and free of torch imports: ``layerport list`` calls it,
    and a spec's ``build`` function should import torch only when it is called.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``layerport`` command group, with ``@cli.command()``."""


@hookspec
def register_export_targets(register: Callable[[ExportTarget], None]) -> None:
    """Register export targets: call ``register(target)`` once for each ``ExportTarget``.

    A target decides where and how a verified export is written: the built-in
    ``onnx`` target writes one ``.onnx`` file; another could write a serving
    repository. ``layerport export --target NAME`` selects one. Keep this hook
    cheap and free of torch imports.
    """

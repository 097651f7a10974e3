"""``layerport new-plugin``: a new plugin package that works as written (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click

from layerport.cli.output import warn
from layerport.cli.scaffold import write_plugin


def _registered_by(name: str) -> list[str]:
    """The plugins that already register a layer called ``name``."""
    from layerport.cli.app import get_registry

    return sorted(layer.plugin.name for layer in get_registry() if layer.spec.name == name)


@click.command(name="new-plugin")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Folder to write the package layerport-NAME into.",
)
def new_plugin(name: str, folder: Path) -> None:
    """Write layerport-NAME, a plugin package for a layer type called NAME.

    The package installs, registers NAME, exports, verifies and passes its own
    tests (the conformance kit and a numpy oracle) as written: an RMS
    normalisation layer to change into yours.

    \b
    Example:
      layerport new-plugin my_norm --dir plugins/
      pip install -c constraints.txt -e plugins/layerport-my_norm
    """
    root = write_plugin(name, folder)
    taken = _registered_by(name)
    if taken:
        warn(
            f"a layer named {name} is already registered by {', '.join(taken)}: with both "
            f"installed, {name} must be asked for as PLUGIN:{name}; choose another name unless "
            "you mean to replace it"
        )
    click.echo(f"wrote {root}")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(root)}")

"""``layerport list``: every registered layer type (torch-free)."""

from __future__ import annotations

from typing import Any

import click

from layerport.cli.app import get_registry
from layerport.cli.options import json_option
from layerport.cli.output import print_json, print_table


@click.command(name="list")
@json_option
def list_command(json_: bool) -> None:
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
                layer.qualified_name if len(registry.providers(layer.name)) > 1 else layer.name,
                layer.spec.description,
                f"{layer.plugin.name} {layer.plugin.version}",
            )
            for layer in registry
        ),
    )

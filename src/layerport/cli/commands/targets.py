"""``layerport targets``: the export targets and their options (torch-free)."""

from __future__ import annotations

import click

from layerport.cli.options import json_option
from layerport.cli.output import print_json, print_table


@click.command(name="targets")
@json_option
def targets_command(json_: bool) -> None:
    """List the export targets 'layerport export --target' can write to, with their options.

    \b
    Example:
      layerport targets
    """
    from layerport.cli.app import _State
    from layerport.plugins import get_export_targets

    found = get_export_targets(strict=_State.debug)
    targets = {name: found[name] for name in sorted(found)}
    rows = [
        {
            "name": target.name,
            "description": target.description,
            "options": [
                {"name": o.name, "default": o.default, "allowed": o.allowed(), "help": o.help}
                for o in target.options
            ],
        }
        for target in targets.values()
    ]
    if json_:
        print_json(rows)
        return
    print_table(
        ("target", "description", "options"),
        (
            (
                target.name,
                target.description,
                ", ".join(f"{o.name} ({o.allowed()})" for o in target.options) or "-",
            )
            for target in targets.values()
        ),
    )

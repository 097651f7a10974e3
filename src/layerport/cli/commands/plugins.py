"""``layerport plugins``: the loaded plugins and the ones that failed (torch-free)."""

from __future__ import annotations

from typing import Any

import click

from layerport import plugins
from layerport.cli.app import _State, get_registry
from layerport.cli.options import json_option
from layerport.cli.output import print_json, print_table, warn


@click.command(name="plugins")
@json_option
def plugins_command(json_: bool) -> None:
    """List the loaded plugins, their layers and entry points, and plugins that failed.

    \b
    Example:
      LAYERPORT_LOAD_PLUGINS='' layerport plugins
    """
    _State.warned = True  # the failures are this command's output, not a warning
    registry = get_registry()
    errors: dict[str, list[str]] = {}
    for failure in registry.failures:
        messages = errors.setdefault(failure.plugin, [])
        if failure.message not in messages:  # aliases of one broken module fail alike
            messages.append(failure.message)
    loaded = plugins.loaded_plugins()
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "version": info.version,
            "status": "failed" if info.name in errors else "ok",
            "error": "; ".join(errors.get(info.name, [])) or None,
            "layers": [layer.name for layer in registry if layer.plugin.name == info.name],
            "entry_points": plugins.entry_point_names(info.name),
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
            "entry_points": plugins.entry_point_names(name),
        }
        for name, messages in errors.items()
        if name not in loaded_names
    ]
    if json_:
        print_json({"plugins": rows, "warnings": plugins.warnings()})
        return
    print_table(
        ("plugin", "version", "layers", "entry points", "status"),
        (
            (
                row["name"],
                row["version"],
                ", ".join(row["layers"]) or "-",
                ", ".join(row["entry_points"]) or "-",
                row["status"] if row["status"] == "ok" else f"failed: {row['error']}",
            )
            for row in rows
        ),
    )
    for message in plugins.warnings():
        warn(message)

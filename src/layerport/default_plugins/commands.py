"""layerport's own commands, added through the same ``register_commands`` hook as plugin commands.

A command that is not listed here does not exist: there is no import list to
forget a line in, and a test checks that every module in ``cli/commands`` is here.
"""

from __future__ import annotations

import click

from layerport import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    from layerport.cli.commands.bench import bench
    from layerport.cli.commands.draft import draft
    from layerport.cli.commands.export import export
    from layerport.cli.commands.generate import generate
    from layerport.cli.commands.infer import infer
    from layerport.cli.commands.inspect import inspect
    from layerport.cli.commands.list import list_command
    from layerport.cli.commands.new_plugin import new_plugin
    from layerport.cli.commands.plugins import plugins_command
    from layerport.cli.commands.run import run
    from layerport.cli.commands.serve import serve
    from layerport.cli.commands.show import show
    from layerport.cli.commands.targets import targets_command
    from layerport.cli.commands.verify import verify

    for command in (
        list_command,
        show,
        plugins_command,
        targets_command,
        run,
        export,
        verify,
        bench,
        inspect,
        infer,
        generate,
        serve,
        new_plugin,
        draft,
    ):
        cli.add_command(command)

"""The ``layerport`` command line.

``app`` holds the command group, the shared options and ``main``, the one place
errors become exit codes; each ``*_commands`` module adds its commands to the
group when imported. Commands that do not need torch (``list``, ``show``,
``plugins``, ``inspect``, ``infer`` and ``--help``) never import it.
"""

from layerport.cli import bench_command, export_commands, file_commands, layer_commands  # noqa: F401
from layerport.cli.app import _State, cli, main

__all__ = ["_State", "cli", "main"]

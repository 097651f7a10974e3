"""The ``layerport`` command line.

- ``app``: the command group, ``main`` (the one place errors become exit codes)
  and what every command needs;
- ``options``: the shared options, each defined once;
- ``output``: tables, JSON, progress and reports;
- ``commands``: one module per command, registered through the built-ins' own
  ``register_commands`` hook (``layerport.default_plugins.commands``), the same
  path plugin commands take.

Commands that do not need torch (``list``, ``show``, ``plugins``, ``targets``,
``inspect``, ``infer`` and ``--help``) never import it.
"""

from layerport.cli.app import _State, cli, main

__all__ = ["_State", "cli", "main"]

"""Export targets: where and how a verified export is written.

The plain ``.onnx`` file is the built-in ``onnx`` target; plugins add others
through the ``register_export_targets`` hook, the way datasette's publishers add
``datasette publish`` targets. A target declares its own options as typed
``Param``s, so they are parsed and checked like a layer's parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layerport.errors import InvalidSpec, UserInputError
from layerport.spec import Param, ParamValue, resolve_values

if TYPE_CHECKING:
    from layerport.results import ExportResult

TargetOptions = Mapping[str, ParamValue]
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class ExportTarget:
    """One way to write an export.

    - ``output_in(folder, stem)``: where the target writes a layer's export
      inside ``folder`` (``exported/``, or the folder of ``export --all``);
      ``stem`` is the layer's file name without suffix.
    - ``check(output, options)``: refuse, before any work, an output that cannot
      be written (raise ``BadFile``).
    - ``write(result, output, options)``: write ``result`` at ``output``
      atomically, so a failure leaves what was there; returns the path of the
      model file written.
    - ``notes(result, options)``: what the user should know about what was
      written (how a server will treat it), said after a successful write;
      library code never prints, so a target returns its notes for the CLI.

    A ``repository`` target writes a folder of models (a serving repository)
    rather than a file: ``-o`` names that folder, for one layer as for ``--all``,
    and ``output_in(folder, stem)`` places each layer's model in it. Without
    ``-o``, the folder is ``exported/`` + the target's name.
    """

    name: str
    description: str
    output_in: Callable[[Path, str], Path]
    check: Callable[[Path, TargetOptions], None]
    write: Callable[[ExportResult, Path, TargetOptions], Path]
    options: tuple[Param, ...] = ()
    repository: bool = False
    notes: Callable[[ExportResult, TargetOptions], Sequence[str]] = lambda result, options: ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidSpec(f"export target name {self.name!r} must be a lowercase name")
        for attribute in ("output_in", "check", "write", "notes"):
            if not callable(getattr(self, attribute)):
                raise InvalidSpec(f"export target {self.name}: {attribute} must be callable")

    def resolve_options(self, given: Mapping[str, object] | None = None) -> dict[str, ParamValue]:
        """Defaults overlaid with ``given``; strings are parsed, every value is checked."""
        return resolve_values(self.options, given, "option", f"for export target {self.name!r}")


def resolve_target(targets: Mapping[str, ExportTarget], name: str) -> ExportTarget:
    """The target called ``name``, or a ``UserInputError`` that lists the others."""
    if name not in targets:
        raise UserInputError(
            f"unknown export target {name!r}; targets: {', '.join(sorted(targets)) or '(none)'}"
        )
    return targets[name]

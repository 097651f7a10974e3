"""The project's errors. The CLI maps each family to its exit code in one place.

Library code raises these and never prints or exits: ``UserInputError`` means the
user asked for something wrong (exit 2), ``WorkFailed`` means the work itself did
not succeed (exit 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """A setting that would fix an error, named as the Python API names it.

    Library code never names a CLI flag: an error's advice holds a ``Setting``
    (``Setting("params", "input_size=SIZE")``), which ``str(error)`` words for the
    Python API ("the params argument (input_size=SIZE)") and the CLI words as its
    flag ("-p input_size=SIZE").
    """

    name: str  # a keyword of the Python API: params, dims, dtype, weights, inputs, threads
    example: str = ""
    more: tuple[str, ...] = ()  # further values, for a setting given once per item (a weight part)

    def examples(self) -> tuple[str, ...]:
        return (self.example, *self.more) if self.example else self.more

    def api_words(self) -> str:
        shown = ", ".join(self.examples())
        return f"the {self.name} argument" + (f" ({shown})" if shown else "")


class LayerportError(Exception):
    """Base class of every error layerport raises on purpose.

    The message is given in parts: text, and ``Setting``s that ``render`` words.
    """

    exit_code = 1

    def __init__(self, *parts: str | Setting) -> None:
        self.parts = parts
        super().__init__(self.render(Setting.api_words))

    def render(self, words: Callable[[Setting], str]) -> str:
        """The message, with each ``Setting`` put in ``words``."""
        return "".join(part if isinstance(part, str) else words(part) for part in self.parts)


class UserInputError(LayerportError):
    """Bad usage, an unknown layer, a bad parameter or dim, or an unusable file."""

    exit_code = 2


class UnknownLayer(UserInputError):
    """No registered layer type answers to the requested name."""


class AmbiguousLayer(UserInputError):
    """Several plugins register the requested bare name."""


class InvalidParameter(UserInputError):
    """A layer parameter is unknown, of the wrong type or out of range."""


class InvalidDim(UserInputError):
    """A dim name is unknown, not dynamic, or its size is not allowed."""


class InvalidSpec(LayerportError):
    """A plugin's layer-type spec is inconsistent. Raised at registration time."""


class BadFile(UserInputError):
    """A file cannot be read, or does not fit what it is used for."""


class InvalidModel(BadFile):
    """A model file is malformed, or its layers do not fit together."""


class ResourceLimit(UserInputError):
    """A run or export would need more memory than the configured limit allows."""


class WorkFailed(LayerportError):
    """The work was attempted and did not succeed."""


class LayerFailed(WorkFailed):
    """A layer's own code (its builder or forward) raised an exception."""


class ExportFailed(WorkFailed):
    """torch.onnx could not export the layer, or the file it made is unusable."""


class VerificationFailed(WorkFailed):
    """The export does not compute what eager PyTorch computes. ``report`` says where."""

    def __init__(self, *parts: str | Setting, report: Any = None) -> None:
        super().__init__(*parts)
        self.report = report


class MissingDependency(LayerportError):
    """The command needs a package that this installation does not have."""


class PluginFailed(WorkFailed):
    """A plugin's own code raised something that is not an ``Exception`` (``SystemExit``)."""


def is_interrupt(error: BaseException) -> bool:
    """Whether ``error`` is the user stopping layerport (Ctrl-C, or SIGTERM turned into it).

    Plugin code may raise anything; only an interrupt is let through to end the
    process. ``SystemExit`` and the like become the plugin's own failure.
    """
    return isinstance(error, KeyboardInterrupt)


def one_line(message: object, limit: int = 300) -> str:
    """Fold a message (often a dependency's multi-line error) into one bounded line."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

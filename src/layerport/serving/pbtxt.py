"""Protocol Buffers text format, the syntax of Triton's ``config.pbtxt``, without its schema.

Triton's schema (``model_config.proto``) ships in ``tritonclient[grpc]``, which
needs a protobuf older than the one torch's exporter needs here, so layerport
writes and reads the subset of the text format it uses itself: messages are
dicts, repeated fields lists, and enum values ``Enum`` strings (written bare,
``KIND_CPU``, where strings are quoted). The serving environment's tests parse
what this writes with protobuf's own ``text_format`` against Triton's schema.

Syntax: https://protobuf.dev/reference/protobuf/textformat-spec/
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from layerport.errors import BadFile


class Enum(str):
    """An enum value: written bare (``TYPE_FP32``), not as a quoted string."""


def render(message: Mapping[str, Any], indent: int = 0) -> str:
    """``message`` in text format, one field a line; a list is a repeated field.

    A list of messages is written ``name [ {...}, {...} ]``, a list of scalars
    ``name: [ 1, 2 ]``, so each repeated field is one entry either way.
    """
    pad = "  " * indent
    lines = []
    for name, value in message.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{name} {{\n{render(value, indent + 1)}{pad}}}\n")
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            items = ",\n".join(f"{pad}  {{\n{render(item, indent + 2)}{pad}  }}" for item in value)
            lines.append(f"{pad}{name} [\n{items}\n{pad}]\n")
        elif isinstance(value, list):
            lines.append(f"{pad}{name}: [ {', '.join(_scalar(v) for v in value)} ]\n")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}\n")
    return "".join(lines)


def _scalar(value: object) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are a subset of the text format's.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {value!r} in text format")


_TOKEN = re.compile(
    r"""\s+|\#[^\n]*
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?(?![\w.]))
    |(?P<word>[A-Za-z_][\w.]*)
    |(?P<punct>[{}\[\]:,;<>])""",
    re.VERBOSE,
)


def parse(text: str, source: str = "config.pbtxt") -> dict[str, Any]:
    """Read text format into dicts: a field given twice, or as ``[...]``, becomes a list.

    Without the schema a field given once reads as a single value; callers that
    expect a repeated field wrap it (``as_list``). Raises ``BadFile`` naming
    ``source`` for text that is not well-formed.
    """
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            line = text.count("\n", 0, position) + 1
            raise BadFile(f"{source} line {line}: cannot read {text[position : position + 20]!r}")
        position = match.end()
        kind = match.lastgroup
        if kind is not None:
            tokens.append((kind, match.group(kind)))
    reader = _Reader(tokens, source)
    message = reader.message(end=None)
    return message


def as_list(value: Any) -> list[Any]:
    """A field read by ``parse`` as the repeated field it is: absent is ``[]``."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class _Reader:
    def __init__(self, tokens: list[tuple[str, str]], source: str) -> None:
        self.tokens = tokens
        self.at = 0
        self.source = source

    def fail(self, expected: str) -> BadFile:
        found = self.tokens[self.at][1] if self.at < len(self.tokens) else "the end"
        return BadFile(f"{self.source}: expected {expected}, found {found!r}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if (
            token is None
            or (value is not None and token[1] != value)
            or (kind is not None and token[0] != kind)
        ):
            raise self.fail(value or kind or "more")
        self.at += 1
        return token[1]

    def message(self, end: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while True:
            token = self.peek()
            if token is None:
                if end is not None:
                    raise self.fail(end)
                return fields
            if end is not None and token[1] == end:
                self.at += 1
                return fields
            name = self.take(kind="word")
            value = self.field_value()
            if name in fields:
                previous = fields[name]
                fields[name] = [*as_list(previous), *as_list(value)]
            else:
                fields[name] = value
            if self.peek() in (("punct", ","), ("punct", ";")):
                self.at += 1

    def field_value(self) -> Any:
        if self.peek() == ("punct", ":"):
            self.at += 1
        token = self.peek()
        if token == ("punct", "["):
            self.at += 1
            items: list[Any] = []
            while self.peek() != ("punct", "]"):
                items.append(self.value())
                if self.peek() == ("punct", ","):
                    self.at += 1
            self.at += 1
            return items
        return self.value()

    def value(self) -> Any:
        token = self.peek()
        if token is None:
            raise self.fail("a value")
        kind, text = token
        if text in ("{", "<"):
            self.at += 1
            return self.message(end="}" if text == "{" else ">")
        self.at += 1
        if kind == "string":
            return _unquote(text)
        if kind == "number":
            number = text.rstrip("fF")
            return float(number) if any(c in number for c in ".eE") else int(number)
        if kind == "word":
            return {"true": True, "false": False}.get(text, Enum(text))
        self.at -= 1
        raise self.fail("a value")


def _unquote(text: str) -> str:
    body = text[1:-1]
    if text[0] == "'":
        body = body.replace('\\"', '"').replace("\\'", "'").replace('"', '\\"')
    try:
        return str(json.loads(f'"{body}"'))
    except ValueError:
        return body

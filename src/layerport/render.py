"""Printing results for people (rich tables) and for scripts (JSON).

Tables go to stdout; warnings, progress and errors go to stderr, so that
``layerport ... --json | jq`` always sees clean JSON.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click


def print_json(data: Any) -> None:
    click.echo(json.dumps(_json_safe(data), indent=2, sort_keys=False))


def _json_safe(data: Any) -> Any:
    # JSON has no NaN or Infinity; write them as strings rather than emit invalid JSON.
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {str(key): _json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_safe(value) for value in data]
    return data


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        *columns, title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD
    )
    for row in rows:
        table.add_row(*(format_cell(cell) for cell in row))
    # Off a terminal (a pipe, a log), rich would wrap at 80 columns; logs can be wider.
    width = None if sys.stdout.isatty() else 120
    Console(file=sys.stdout, soft_wrap=False, width=width).print(table)


def print_fields(fields: Iterable[tuple[str, object]]) -> None:
    """``name: value`` lines, aligned."""
    pairs = [(name, format_cell(value)) for name, value in fields]
    width = max((len(name) for name, _ in pairs), default=0)
    for name, value in pairs:
        click.echo(f"{name + ':':<{width + 1}} {value}")


def format_cell(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return " x ".join(str(item) for item in value) if value else "()"
    if value is None:
        return "-"
    return str(value)


def format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)

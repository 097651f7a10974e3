"""Progress on stderr for long work, such as ``export --all``.

On a terminal it is a live rich progress bar; in a log or CI, one line per step,
so the log shows where time went without escape codes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import click

T = TypeVar("T")


def progress_steps(items: Sequence[T], *, label: Callable[[T], str], what: str) -> Iterator[T]:
    """Yield each item while showing which one is being worked on."""
    if sys.stderr.isatty():
        yield from _bar(items, label, what)
        return
    total = len(items)
    for index, item in enumerate(items, start=1):
        started = time.perf_counter()
        click.echo(f"[{index}/{total}] {what} {label(item)}", err=True)
        yield item
        click.echo(
            f"[{index}/{total}] {label(item)} finished in {time.perf_counter() - started:.1f} s",
            err=True,
        )


def _bar(items: Sequence[T], label: Callable[[T], str], what: str) -> Iterator[T]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=len(items))
        for item in items:
            progress.update(task, description=f"{what} {label(item)}")
            yield item
            progress.advance(task)

"""Progress bars for long work (rich), silenced by --quiet or when not attached to a terminal in CI."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def quiet_default() -> bool:
    return bool(os.environ.get("ANIMACY_QUIET"))


def progress(items: Iterable[T], description: str, quiet: bool = False, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar unless quiet."""
    if quiet or quiet_default():
        yield from items
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)

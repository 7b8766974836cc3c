"""The progress bar every long command of both CLIs shows: one definition, on stderr.

Library functions report progress through a plain callback ``progress(done, total)``; this context
manager gives a CLI that callback, drawing a rich bar on stderr when stderr is a terminal (never
into a pipe, a log or ``--json`` output) and ``None`` otherwise, so the library skips the calls.

Example::

    with progress_bar("extract", "steps", enabled=not as_json) as progress:
        extract(src, dst, progress=progress)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ProgressFn", "progress_bar"]

#: ``progress(done, total)``: ``done`` of ``total`` units finished.
ProgressFn = Callable[[int, int], None]


@contextmanager
def progress_bar(label: str, unit: str = "", *, enabled: bool = True) -> Iterator[ProgressFn | None]:
    """A transient bar labelled ``label`` counting ``unit`` on stderr; ``None`` when ``enabled``
    is false or stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update

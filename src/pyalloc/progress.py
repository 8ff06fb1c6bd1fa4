"""A progress bar on stderr for the command line's long work.

Drawn with rich, only when rich is installed and stderr is a terminal, and
only for work of at least ``minimum`` units (ops replayed or generated,
frames drawn): a short run shows nothing, and a piped or redirected run
never gets escape codes in its output.
"""

from __future__ import annotations

import sys
from typing import Any, Final, TextIO

PROGRESS_MIN_OPS: Final = 200_000  # runs shorter than this show no progress bar


def rich_for(stream: TextIO) -> bool:
    """Whether to draw with rich on ``stream``: installed, and a terminal."""
    if not stream.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class ProgressBar:
    """A bar over ``total_work`` units, as a context manager.

    ``start(description, work)`` begins a unit of about ``work`` (the previous
    unit counts as complete then) and ``advance(done)`` moves the bar within
    it. The bar is redrawn only in those calls, never by a thread of its own,
    which would compete with a timed replay for the interpreter.
    """

    def __init__(self, total_work: int, minimum: int = PROGRESS_MIN_OPS) -> None:
        self.total = total_work
        self.minimum = minimum
        self.bar: Any = None
        self.task: Any = None
        self.expected = 0  # work of the current unit ...
        self.done = 0  # ... and how much of it was reported

    def __enter__(self) -> ProgressBar:
        if self.total >= self.minimum and rich_for(sys.stderr):
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
                auto_refresh=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)
        return self

    def start(self, description: str, work: int) -> None:
        self._complete_unit(description)
        self.expected = work
        self.done = 0

    def _complete_unit(self, description: str | None = None) -> None:
        """Count the current unit as done (a subprocess's replay reports no ops)."""
        if self.bar is not None:
            rest = max(0, self.expected - self.done)
            if description is None:
                self.bar.update(self.task, advance=rest)
            else:
                self.bar.update(self.task, advance=rest, description=description)
            self.bar.refresh()
        self.done = self.expected

    def advance(self, done: int) -> None:
        self.done += done
        if self.bar is not None:
            self.bar.update(self.task, advance=done)
            self.bar.refresh()

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self._complete_unit()  # the bar ends at 100%
            self.bar.stop()

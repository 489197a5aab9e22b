"""Rendering for people (rich tables) and scripts (--json)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from nodes.private_files import exposure_warnings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from nodes.config import Config


class LazyConsole:
    """A rich console made on first use: a command that prints only JSON never imports rich."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr

    @functools.cached_property
    def console(self) -> Console:
        """The rich console itself."""
        from rich.console import Console

        width = None if self.stderr or sys.stdout.isatty() else 160
        return Console(stderr=self.stderr, highlight=False, soft_wrap=True, width=width)

    def print(self, *objects: Any, **options: Any) -> None:
        """Print as rich does (markup unless ``markup=False``)."""
        self.console.print(*objects, **options)

    @property
    def is_terminal(self) -> bool:
        """Whether the console writes to a terminal."""
        return self.console.is_terminal


out = LazyConsole()
err = LazyConsole(stderr=True)


def warn_exposed(config: Config) -> None:
    """Name, on stderr, every secret or key file that its group or others can read."""
    for line in exposure_warnings(config.private_files()):
        err.print(line, markup=False)


def emit_json(value: Any) -> None:
    """Print `value` as JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table."""
    from rich.table import Table

    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*("" if v is None else str(v) for v in row))
    out.print(grid)


def when(at_ms: int) -> str:
    """A Unix-milliseconds time as local ISO 8601 to the second."""
    return dt.datetime.fromtimestamp(at_ms / 1000).astimezone().isoformat(timespec="seconds")


def short(hex_text: str, keep: int = 10) -> str:
    """Shorten a 0x hash for a table."""
    return hex_text if len(hex_text) <= keep + 4 else f"{hex_text[:keep]}…"


def progress_shown(quiet: bool = False) -> bool:
    """Whether a progress bar would show: on a terminal, unless quiet."""
    return not quiet and err.is_terminal


def byte_progress(quiet: bool = False) -> Progress:
    """A progress bar of bytes, rate and ETA on stderr (silent off a terminal or when quiet)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err.console,
        transient=True,
        disable=not progress_shown(quiet),
    )


def count_progress() -> Progress:
    """A progress bar of items done out of a total, on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err.console,
        transient=True,
        disable=not progress_shown(),
    )

"""Rendering for people (rich tables) and scripts (--json)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from nodes.config import Config
from nodes.private_files import exposure_warnings

_WIDTH = None if sys.stdout.isatty() else 160
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def warn_exposed(config: Config) -> None:
    """Name, on stderr, every secret or key file that its group or others can read."""
    for line in exposure_warnings(config.private_files()):
        err.print(line, markup=False)


def emit_json(value: Any) -> None:
    """Print `value` as JSON on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table."""
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


def byte_progress(quiet: bool = False) -> Progress:
    """A progress bar of bytes, rate and ETA on stderr (silent off a terminal or when quiet)."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    )


def count_progress() -> Progress:
    """A progress bar of items done out of a total, on stderr."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )

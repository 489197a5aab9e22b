"""The vmsnap command line: composes one sub-app per noun."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.main
from typer._click.core import Command, Context
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from cli.render import err
from cli.state import AppState
from ledger.errors import VmsnapError

TOP_LEVEL = ("init", "up", "down", "status")
"""The commands of ``cli.deployment``, at the top level."""
NOUNS = (
    "vm",
    "disk",
    "snapshot",
    "rollback",
    "schedule",
    "retention",
    "backup",
    "key",
    "ledger",
    "audit",
    "access",
    "node",
)
"""One sub-app per noun, each the ``app`` of the module ``cli.<noun>``."""


class LazyCommands(MutableMapping[str, Command]):
    """The top-level commands by name; a command's module is imported when it is looked up.

    So a command starts without the imports of every other one (help, which
    lists them all, imports them all).
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded:
            self._loaded[name] = _load(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in TOP_LEVEL or name in NOUNS or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        added = [name for name in self._loaded if name not in TOP_LEVEL + NOUNS]
        return iter((*TOP_LEVEL, *NOUNS, *added))

    def __len__(self) -> int:
        return sum(1 for _name in self)


def _load(name: str) -> Command:
    if name in TOP_LEVEL:
        return typer.main.get_group(importlib.import_module("cli.deployment").app).commands[name]
    if name in NOUNS:
        group = typer.main.get_group(importlib.import_module(f"cli.{name}").app)
        group.name = name
        return group
    raise KeyError(name)


class VmsnapGroup(TyperGroup):
    """The root group: a VmsnapError ends the command with its message and exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands()

    def list_commands(self, ctx: Context) -> list[str]:
        """Every command's name, in the order of the help listing."""
        return list(self.commands)

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        """Run the command; turn a VmsnapError into one line on stderr."""
        try:
            return super().invoke(ctx)
        except VmsnapError as error:
            err.print(f"error: {error.message}", markup=False)
            ctx.exit(error.exit_code)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Parse and run; a usage error is one line naming the help to read, exit code 2."""
        standalone = standalone_mode
        try:
            result = super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )
        except UsageError as error:
            if not standalone:
                raise
            if isinstance(error, NoArgsIsHelpError):
                error.show()
            else:
                where = error.ctx.command_path if error.ctx else "vmsnap"
                err.print(f"error: {error.format_message()} (see {where} --help)", markup=False)
            sys.exit(error.exit_code)
        if not standalone:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=VmsnapGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="VM-disk snapshots with a tamper-evident history on an Ethereum contract.",
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Path of vmsnap.toml (or its folder).")
    ] = None,
) -> None:
    """VM-disk snapshots with a tamper-evident history on an Ethereum contract."""
    ctx.obj = AppState(config_path=config)


def run() -> None:
    """Console-script entry point."""
    app()

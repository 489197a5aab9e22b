"""The vmsnap command line: composes one sub-app per noun."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from cli import (
    access,
    audit,
    backup,
    deployment,
    disk,
    key,
    ledger,
    node,
    retention,
    rollback,
    schedule,
    snapshot,
    vm,
)
from cli.render import err
from cli.state import AppState
from ledger.errors import VmsnapError


class VmsnapGroup(TyperGroup):
    """The root group: a VmsnapError ends the command with its message and exit code."""

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


deployment.register(app)
app.add_typer(vm.app, name="vm")
app.add_typer(disk.app, name="disk")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(rollback.app, name="rollback")
app.add_typer(schedule.app, name="schedule")
app.add_typer(retention.app, name="retention")
app.add_typer(backup.app, name="backup")
app.add_typer(key.app, name="key")
app.add_typer(ledger.app, name="ledger")
app.add_typer(audit.app, name="audit")
app.add_typer(access.app, name="access")
app.add_typer(node.app, name="node")


def run() -> None:
    """Console-script entry point."""
    app()

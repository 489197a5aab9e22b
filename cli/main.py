"""The vmsnap command line: composes one sub-app per noun."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import backup, deployment, disk, ledger, node, retention, rollback, snapshot, vm
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
app.add_typer(retention.app, name="retention")
app.add_typer(backup.app, name="backup")
app.add_typer(ledger.app, name="ledger")
app.add_typer(node.app, name="node")


def run() -> None:
    """Console-script entry point."""
    app()

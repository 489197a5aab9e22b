"""vmsnap rollback: bring a VM back to one of its snapshots."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.render import emit_json, out, table, when
from cli.state import state
from ledger.sizes import format_size
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Roll VMs back to their snapshots.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def start(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM to roll back.")],
    snapshot: Annotated[str, typer.Argument(help="Snapshot id or unique prefix.")],
    json: JsonOption = False,
) -> None:
    """Stop the VM, restore only the chunks that differ from the snapshot, restart it."""
    result = ControllerApi(state(ctx).config()).rollback(vm, snapshot)
    if json:
        emit_json(result)
        return
    out.print(
        f"rolled {vm} back to {result['snapshot'][:12]} in {result['seconds']:.1f} s: "
        f"{result['chunks_restored']} of {result['chunks_checked']} chunks restored "
        f"({format_size(result['bytes_restored'])})"
    )


@app.command("list")
def list_rollbacks(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Argument(help="Only this VM's rollbacks.")] = None,
    json: JsonOption = False,
) -> None:
    """List rollbacks, oldest first."""
    found = ControllerApi(state(ctx).config()).rollbacks(vm)
    if json:
        emit_json(found)
        return
    table(
        None,
        ["id", "vm", "snapshot", "mode", "status", "started", "restored"],
        (
            [
                r["id"][:12],
                r["vm"],
                r["snapshot"][:12],
                r["mode"],
                r["status"],
                when(r["started_at_ms"]),
                format_size(r["bytes_restored"]),
            ]
            for r in found
        ),
    )

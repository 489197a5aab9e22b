"""vmsnap audit: what the contract says, then whether the data agrees with it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from cli.render import emit_json, out, table
from cli.state import state
from ledger.errors import VmsnapError
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Audit from the contract down to the data.")


class AuditFailed(VmsnapError):
    """The data does not match the contract's record."""

    exit_code = 6


@app.command()
def snapshot(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Snapshot id (or a unique prefix).")],
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The contract's record of a snapshot (root, status, who, when), then its data checked."""
    result = ControllerApi(state(ctx).config()).audit_snapshot(ref)
    record, data = result["contract"], result["data"]
    if json:
        emit_json(result)
    else:
        when = dt.datetime.fromtimestamp(record["updated_at"], dt.UTC).isoformat()
        table(
            f"contract record of {record['snapshot'][:12]}",
            ["field", "value"],
            [
                ["status", record["status"]],
                ["root", record["root"]],
                ["previous", record["previous"]],
                ["ledger seq", record["seq"]],
                ["last changed by", record["updated_by"]],
                ["last changed at (block time)", when],
            ],
        )
        verdict = "matches" if data["ok"] else "DOES NOT match"
        out.print(f"the backup cluster's data {verdict} the contract's record", markup=False)
        for problem in data["problems"]:
            out.print(f"  {problem}", markup=False)
    if not data["ok"]:
        raise AuditFailed("the snapshot's data does not match the contract")

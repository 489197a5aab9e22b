"""vmsnap access: which accounts may write to the ledger, and granting or revoking it."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.render import emit_json, out, table
from cli.state import state
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Who may write to the ledger (admin commands).")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AccountArg = Annotated[str, typer.Argument(help="Account address (0x and 40 hex digits).")]


@app.command("list")
def list_access(ctx: typer.Context, json: JsonOption = False) -> None:
    """Every account ever given roles on the contract, with its roles now."""
    rows = ControllerApi(state(ctx).config()).access()
    if json:
        emit_json(rows)
        return
    table(
        None,
        ["account", "roles", "admin", "signs here as", "changed by", "block"],
        (
            [
                r["account"],
                ", ".join(r["roles"]) or "-",
                "yes" if r["admin"] else "",
                r["signs_here_as"] or "-",
                r["changed_by"],
                r["changed_in_block"],
            ]
            for r in rows
        ),
    )


@app.command()
def grant(
    ctx: typer.Context,
    account: AccountArg,
    role: Annotated[
        str,
        typer.Option(help="operator (appends) or deleter (appends and deletes)."),
    ],
    json: JsonOption = False,
) -> None:
    """Give an account the operator or deleter role (signed with the admin key)."""
    row = ControllerApi(state(ctx).config()).grant(account, role)
    if json:
        emit_json(row)
        return
    sent = int(row.get("funded_wei") or 0)
    funded = f" (sent {sent / 10**18:g} ether for gas)" if sent else ""
    out.print(f"{row['account']}: {', '.join(row['roles'])}{funded}")


@app.command()
def revoke(ctx: typer.Context, account: AccountArg, json: JsonOption = False) -> None:
    """Take every role from an account (signed with the admin key)."""
    row = ControllerApi(state(ctx).config()).revoke(account)
    if json:
        emit_json(row)
        return
    out.print(f"{row['account']}: no roles")

"""vmsnap ledger: read, verify and replay the on-chain history."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.render import emit_json, out, short, table, when
from cli.state import state
from ledger.errors import LedgerCorrupted
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Read, verify and replay the ledger.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("log")
def show_log(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM's events.")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the last N events.", min=1)
    ] = None,
    json: JsonOption = False,
) -> None:
    """Print ledger events in order."""
    found = ControllerApi(state(ctx).config()).log(vm, limit)
    if json:
        emit_json(found)
        return
    table(
        None,
        ["seq", "stream", "v", "event", "at", "by", "block", "head"],
        (
            [
                e["seq"],
                e["stream"],
                e["version"],
                e["type"] + _summary(e["fields"]),
                when(e["at_ms"]),
                short(e["sender"]),
                e["block_number"],
                short(e["head"]),
            ]
            for e in found
        ),
    )


@app.command()
def head(ctx: typer.Context, json: JsonOption = False) -> None:
    """Print the contract's hash-chain head and event count."""
    found = ControllerApi(state(ctx).config()).head()
    if json:
        emit_json(found)
        return
    out.print(f"contract {found['contract']} on chain {found['chain_id']} ({found['backend']})")
    out.print(f"events   {found['count']}")
    out.print(f"head     {found['head']}")
    out.print(f"block    {found['block']} {found['block_hash']}")


@app.command()
def verify(
    ctx: typer.Context,
    node: Annotated[
        str | None, typer.Option(help="Audit this node's ledger replica instead.")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Recompute the hash chain, compare it with the contract, and check the projection."""
    report = ControllerApi(state(ctx).config()).verify(node)
    if json:
        emit_json(report)
    elif node is not None:
        out.print(f"replica {node}: block {report['head_number']} {report['head_hash']}")
        out.print(f"events checked      {report['events']}")
        out.print(f"recomputed head     {report['head']}")
        out.print(f"contract head       {report['contract_head']}")
        out.print(f"agrees with         {', '.join(report['agrees_with']) or '-'}")
    else:
        out.print(f"events checked      {report['events']}")
        out.print(f"recomputed head     {report['head']}")
        out.print(f"contract head       {report['contract_head']}")
        out.print(f"projection = replay {report['projection_matches']}")
    if not report["ok"]:
        raise LedgerCorrupted("; ".join(report["problems"]))
    if not json:
        out.print("[green]verified: the head matches the contract[/green]")


@app.command()
def nodes(ctx: typer.Context, json: JsonOption = False) -> None:
    """Each ledger replica: head block, lag behind the sequencer, agreed or diverged."""
    found = ControllerApi(state(ctx).config()).ledger_nodes()
    if json:
        emit_json(found["replicas"])
        return
    if found["sequencer"] is None:
        out.print("no ledger replicas: the controller holds the only copy (chain.replicas = false)")
        return
    seq = found["sequencer"]
    out.print(
        f"sequencer {seq['name']} at block {seq['head_number']}, committed {found['committed']},"
        f" a majority is {found['majority']}"
    )
    table(
        None,
        ["replica", "state", "head", "hash", "lag", "problem"],
        (
            [
                r["name"],
                r["state"],
                r.get("head_number", "-"),
                short(r.get("head_hash", "-")),
                r.get("lag", "-"),
                r.get("problem") or "",
            ]
            for r in found["replicas"]
        ),
    )


@app.command()
def replay(ctx: typer.Context, json: JsonOption = False) -> None:
    """Rebuild the projection database from the contract's events."""
    result = ControllerApi(state(ctx).config()).replay()
    if json:
        emit_json(result)
        return
    out.print(f"replayed {result['events']} events in {result['seconds']:.2f} s")


def _summary(fields: dict[str, Any]) -> str:
    if "vm" in fields:
        return f" {fields['vm']}"
    if "deployment" in fields:
        return f" {fields['deployment']}"
    return ""

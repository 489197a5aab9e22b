"""vmsnap rollback: bring a VM back to one of its snapshots."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.render import emit_json, out, table, when
from cli.state import state
from ledger.errors import InputError, VmsnapError
from ledger.sizes import format_size
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Roll VMs back to their snapshots.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class RollbackDiffFailed(VmsnapError):
    """The recomputed difference does not match the chain."""

    exit_code = 6

    def __init__(self) -> None:
        super().__init__("the rollback's difference does not verify")


@app.command()
def start(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM to roll back.")],
    snapshot: Annotated[str, typer.Argument(help="Snapshot id or unique prefix.")],
    fast: Annotated[
        bool, typer.Option("--fast", help="Run the VM on a mirror at once; restore behind it.")
    ] = False,
    auto: Annotated[
        bool, typer.Option("--auto", help="With --fast: finish once the restore is done.")
    ] = False,
    json: JsonOption = False,
) -> None:
    """Roll a VM back: normal (stop, restore what differs, restart) or --fast."""
    if auto and not fast:
        raise InputError("--auto goes with --fast")
    result = ControllerApi(state(ctx).config()).rollback(vm, snapshot, fast, auto)
    if json:
        emit_json(result)
        return
    if fast:
        out.print(
            f"{vm} runs on mirrors of {result['snapshot'][:12]} after "
            f"{result['seconds_to_io']:.2f} s; restoring in the background "
            f"(vmsnap rollback status {vm}; finish with vmsnap rollback finish {vm})"
        )
        return
    out.print(
        f"rolled {vm} back to {result['snapshot'][:12]} in {result['seconds']:.1f} s: "
        f"{result['chunks_restored']} of {result['chunks_checked']} chunks restored "
        f"({format_size(result['bytes_restored'])})"
    )


@app.command()
def status(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM.")],
    json: JsonOption = False,
) -> None:
    """The VM's rollback in progress (or its last): phase, restore progress, journal writes."""
    row = ControllerApi(state(ctx).config()).rollback_status(vm)
    if json:
        emit_json(row)
        return
    restore = row.get("restore")
    if restore is None:
        progress = "done" if row["phase"] not in ("started", "mirrored") else "-"
    elif restore.get("waiting"):
        progress = f"waiting: {restore['waiting']}"
    else:
        progress = f"{restore['checked']}/{restore['chunks']} chunks checked"
    written = sum(j["written_since_start"] for j in row.get("journals") or [])
    table(
        f"rollback {row['id'][:12]} of {vm}",
        ["field", "value"],
        [
            ["snapshot", row["snapshot"][:12]],
            ["mode", row["mode"]],
            ["status", row["status"]],
            ["phase", row["phase"]],
            ["restore", progress],
            ["writes journaled since the start tag", written],
            ["difference root", row["difference_root"] or "-"],
        ],
    )


@app.command()
def finish(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM whose fast rollback ends.")],
    json: JsonOption = False,
) -> None:
    """End a fast rollback: end tag and difference on chain, back on business storage."""
    result = ControllerApi(state(ctx).config()).finish_rollback(vm)
    if json:
        emit_json(result)
        return
    out.print(
        f"{vm} is back on business storage: {result['changed_chunks']} chunks written during "
        f"the rollback applied ({result['seconds']:.1f} s since the start)"
    )


@app.command()
def diff(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="A VM (its last fast rollback) or a rollback id.")],
    json: JsonOption = False,
) -> None:
    """Recompute a fast rollback's difference from its journal; compare with the chain."""
    result = ControllerApi(state(ctx).config()).rollback_diff(ref)
    if json:
        emit_json(result)
    else:
        verdict = "matches" if result["ok"] else "DOES NOT match"
        out.print(
            f"rollback {result['rollback'][:12]} of {result['vm']}: {result['changed_chunks']} "
            f"chunks changed; the recomputed root {verdict} the root on chain"
        )
        for problem in result["problems"]:
            out.print(f"  {problem}", markup=False)
    if not result["ok"]:
        raise RollbackDiffFailed()


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

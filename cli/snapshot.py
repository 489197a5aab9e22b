"""vmsnap snapshot: take, list, show and verify snapshots."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.render import byte_progress, emit_json, out, progress_shown, short, table, when
from cli.state import state
from ledger.errors import InputError, VmsnapError
from ledger.sizes import format_size
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Take, list, show and verify snapshots.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class SnapshotVerifyFailed(VmsnapError):
    """At least one snapshot did not verify."""

    exit_code = 6


def _totals(snap: dict[str, Any]) -> dict[str, int]:
    disks = snap["disk_details"]
    return {
        key: sum(int(d[key]) for d in disks)
        for key in ("size", "chunks", "changed_chunks", "new_chunks", "bytes_read", "bytes_stored")
    }


@app.command()
def create(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM to snapshot.")],
    disk: Annotated[
        list[str] | None, typer.Option("--disk", help="Only this disk (repeatable).")
    ] = None,
    json: JsonOption = False,
) -> None:
    """Take a snapshot: frozen at once, processed into the backup cluster, committed on chain."""
    api = ControllerApi(state(ctx).config())
    if progress_shown(quiet=json):
        with byte_progress() as bar:
            task = bar.add_task(f"snapshot {vm}", total=None)
            snap = api.create_snapshot(
                vm, disk or [], lambda done, total: bar.update(task, completed=done, total=total)
            )
    else:
        snap = api.create_snapshot(vm, disk or [])
    if json:
        emit_json(snap)
        return
    totals = _totals(snap)
    kind = "incremental" if snap["parent"] else "full"
    out.print(
        f"snapshot {snap['id'][:12]} of {vm} committed ({kind}): "
        f"{format_size(totals['bytes_read'])} read, {totals['new_chunks']} new chunks, "
        f"{format_size(totals['bytes_stored'])} stored; root {short(snap['root'], 16)}"
    )


@app.command("list")
def list_snapshots(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Argument(help="Only this VM's snapshots.")] = None,
    json: JsonOption = False,
) -> None:
    """List snapshots, oldest first."""
    found = ControllerApi(state(ctx).config()).snapshots(vm)
    if json:
        emit_json(found)
        return
    table(
        None,
        ["id", "vm", "status", "taken", "by", "parent", "disks", "read", "stored"],
        (
            [
                s["id"][:12],
                s["vm"],
                s["status"] + (" (protected)" if s.get("protected") else ""),
                when(s["requested_at_ms"]),
                s.get("schedule") or "hand",
                (s["parent"] or "")[:12],
                ",".join(s["disks"]),
                format_size(_totals(s)["bytes_read"]),
                format_size(_totals(s)["bytes_stored"]),
            ]
            for s in found
        ),
    )


@app.command()
def show(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id (or a unique prefix).")],
    json: JsonOption = False,
) -> None:
    """Show one snapshot: sizes, dedup and compression, chunk counts, root, parent, ledger seqs."""
    snap = ControllerApi(state(ctx).config()).snapshot(snapshot)
    if json:
        emit_json(snap)
        return
    totals = _totals(snap)
    data = sum(int(d["chunks"]) * int(d["chunk_size"]) for d in snap["disk_details"])
    out.print(f"[bold]snapshot {snap['id']}[/bold]")
    for label, value in (
        ("vm", snap["vm"]),
        ("status", snap["status"]),
        ("parent", snap["parent"] or "-"),
        ("root", snap["root"] or "-"),
        ("taken", when(snap["requested_at_ms"])),
        ("ledger seq", f"requested {snap['requested_seq']}, committed {snap['committed_seq']}"),
        ("disk size", format_size(totals["size"])),
        ("data referenced", f"{format_size(data)} in {totals['chunks']} chunks"),
        ("changed", f"{format_size(totals['bytes_read'])} in {totals['changed_chunks']} chunks"),
        ("stored", f"{format_size(totals['bytes_stored'])} in {totals['new_chunks']} new chunks"),
        ("dedup + compression", _ratio(totals["bytes_read"], totals["bytes_stored"])),
    ):
        out.print(f"{label:20} {value}")
    if snap.get("reason"):
        out.print(f"{'failure':20} {snap['reason']}")


def _ratio(read: int, stored: int) -> str:
    return f"{read / stored:.2f}x" if stored else "all deduplicated" if read else "-"


@app.command()
def verify(
    ctx: typer.Context,
    snapshot: Annotated[
        str | None, typer.Argument(help="Snapshot id (or a unique prefix).")
    ] = None,
    all_snapshots: Annotated[bool, typer.Option("--all", help="Every committed snapshot.")] = False,
    json: JsonOption = False,
) -> None:
    """Fetch every manifest and chunk, check every id, recompute the root, compare with chain."""
    api = ControllerApi(state(ctx).config())
    if all_snapshots:
        refs = [s["id"] for s in api.snapshots() if s["status"] == "committed"]
    elif snapshot:
        refs = [snapshot]
    else:
        raise InputError("give a snapshot id or --all")
    reports = [api.verify_snapshot(ref) for ref in refs]
    if json:
        emit_json(reports if all_snapshots else reports[0])
    else:
        for report in reports:
            verdict = "[green]verified[/green]" if report["ok"] else "[red]FAILED[/red]"
            out.print(
                f"{report['snapshot'][:12]} {report['vm']}: {verdict}; "
                f"{report['chunks_checked']} chunks, "
                f"{format_size(report['bytes_checked'])} checked"
            )
            for problem in report["problems"]:
                out.print(f"  {problem}", markup=False)
    failed = [r for r in reports if not r["ok"]]
    if failed:
        raise SnapshotVerifyFailed(
            f"{len(failed)} of {len(reports)} snapshots failed verification: "
            + "; ".join(f"{r['snapshot'][:12]}: {r['problems'][0]}" for r in failed)
        )


@app.command()
def delete(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id or unique prefix.")],
    no_gc: Annotated[
        bool, typer.Option("--no-gc", help="Only delete; leave garbage collection for later.")
    ] = False,
    json: JsonOption = False,
) -> None:
    """Delete a snapshot from business, transfer and backup (one event each), then collect."""
    result = ControllerApi(state(ctx).config()).delete_snapshot(snapshot, gc=not no_gc)
    if json:
        emit_json(result)
        return
    out.print(f"deleted snapshot {result['snapshot'][:12]} of {result['vm']}")
    if result.get("gc_error"):
        out.print(result["gc_error"], markup=False)
    gc = result.get("gc")
    if gc:
        out.print(
            f"garbage collection: {gc['chunks']} chunks ({gc['copies']} copies) removed, "
            f"{format_size(gc['bytes_reclaimed'])} reclaimed"
        )


@app.command()
def protect(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id (or a unique prefix).")],
) -> None:
    """Protect a snapshot: retention never deletes it, and delete refuses it."""
    done = ControllerApi(state(ctx).config()).protect(snapshot, True)
    out.print(f"snapshot {done['snapshot'][:12]} of {done['vm']} is protected")


@app.command()
def unprotect(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Argument(help="Snapshot id (or a unique prefix).")],
) -> None:
    """Lift a snapshot's protection: retention and delete may remove it again."""
    done = ControllerApi(state(ctx).config()).protect(snapshot, False)
    out.print(f"snapshot {done['snapshot'][:12]} of {done['vm']} is no longer protected")

"""vmsnap backup: scrub and repair the backup cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.render import count_progress, emit_json, out
from cli.state import state
from nodes import crashpoints, disk_io, maintenance
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Scrub and repair the backup cluster.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def scrub(ctx: typer.Context, json: JsonOption = False) -> None:
    """Re-hash every stored copy; damaged copies are quarantined and repaired from replicas."""
    config = state(ctx).config()
    with count_progress() as bar:
        task = bar.add_task("scrub", total=None)
        summary = disk_io.run(
            maintenance.scrub(
                config, lambda done, total: bar.update(task, completed=done, total=total)
            )
        )
    if json:
        emit_json(summary.plain())
        return
    for node, checked in summary.checked.items():
        out.print(f"{node}: {checked} copies checked, {summary.damaged[node]} damaged")
    for node in summary.unreachable:
        out.print(f"{node}: unreachable")
    repaired = summary.repair
    out.print(
        f"repair: {repaired.copies_made} copies made, "
        f"{repaired.under_replicated} chunks still below {config.topology.replicas} copies"
    )


@app.command()
def repair(ctx: typer.Context, json: JsonOption = False) -> None:
    """Bring every chunk back to R copies (after a node was lost or replaced)."""
    config = state(ctx).config()
    crashpoints.arm(state(ctx).env.get(crashpoints.CRASH_ENV, ""), config.run_dir)
    with count_progress() as bar:
        task = bar.add_task("repair", total=None)
        report = disk_io.run(
            maintenance.repair(
                config, lambda done, total: bar.update(task, completed=done, total=total)
            )
        )
    if json:
        emit_json(report.__dict__)
        return
    out.print(
        f"{report.chunks} chunks checked, {report.copies_made} copies made, "
        f"{report.under_replicated} below {config.topology.replicas} copies"
    )
    for node in report.unreachable:
        out.print(f"{node}: unreachable")


@app.command()
def gc(ctx: typer.Context, json: JsonOption = False) -> None:
    """Remove chunks no live snapshot references (waits for running snapshots)."""
    report = ControllerApi(state(ctx).config()).collect_garbage()
    if json:
        emit_json(report)
        return
    out.print(
        f"{report['live_snapshots']} live snapshots reference {report['referenced']} chunks; "
        f"removed {report['chunks']} chunks ({report['copies']} copies), "
        f"{report['bytes_reclaimed']} bytes reclaimed"
    )

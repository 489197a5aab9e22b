"""vmsnap retention: keep-* rules applied to a VM's snapshots."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.render import emit_json, out, table
from cli.state import state
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Apply retention rules to snapshots.")
Count = Annotated[int | None, typer.Option(min=1, help="Keep this many (see docs/snapshots.md).")]


@app.command()
def apply(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM whose snapshots the rules apply to.")],
    keep_last: Annotated[int | None, typer.Option(min=1, help="Keep the N newest.")] = None,
    keep_hourly: Count = None,
    keep_daily: Count = None,
    keep_weekly: Count = None,
    keep_monthly: Count = None,
    keep_yearly: Count = None,
    keep_within: Annotated[
        str | None, typer.Option(help="Keep all taken within this span of the newest, e.g. 30d.")
    ] = None,
    tz: Annotated[str, typer.Option("--tz", help="Time zone of hours, days, weeks...")] = "UTC",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Keep what any rule keeps (as restic and PBS combine them); delete the rest."""
    rules = {
        "keep_last": keep_last,
        "keep_hourly": keep_hourly,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
        "keep_within": keep_within,
        "tz": tz,
    }
    result = ControllerApi(state(ctx).config()).apply_retention(vm, rules, dry_run)
    if json:
        emit_json(result)
        return
    table(
        None,
        ["snapshot", "decision", "why"],
        (
            [
                d["id"][:12],
                "keep" if d["keep"] else ("would delete" if dry_run else "deleted"),
                ", ".join(d["reasons"]),
            ]
            for d in result["decisions"]
        ),
    )
    if result["gc"]:
        out.print(f"garbage collection removed {result['gc']['chunks']} chunks")
    if result.get("gc_error"):
        out.print(result["gc_error"], markup=False)

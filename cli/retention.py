"""vmsnap retention: keep-* rules, stored per VM (or per schedule) and applied."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.render import emit_json, out, table
from cli.state import state
from ledger.rules import rules_from
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Keep-* rules: set, show, clear and apply them.")
VmArg = Annotated[str, typer.Argument(help="The VM whose snapshots the rules govern.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Last = Annotated[int | None, typer.Option(help="Keep the N newest.")]
Hourly = Annotated[int | None, typer.Option(help="Keep the newest of each of the last N hours.")]
Daily = Annotated[int | None, typer.Option(help="Keep the newest of each of the last N days.")]
Weekly = Annotated[int | None, typer.Option(help="Keep the newest of each of the last N weeks.")]
Monthly = Annotated[int | None, typer.Option(help="Keep the newest of each of the last N months.")]
Yearly = Annotated[int | None, typer.Option(help="Keep the newest of each of the last N years.")]
Within = Annotated[
    str | None, typer.Option(help="Keep all taken within this span of the newest, e.g. 30d.")
]
Zone = Annotated[
    str | None,
    typer.Option("--tz", help="Time zone of hours, days, weeks... (default: the controller's)."),
]


def rules(
    keep_last: int | None,
    keep_hourly: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    keep_monthly: int | None,
    keep_yearly: int | None,
    keep_within: str | None,
    tz: str | None,
) -> dict[str, Any]:
    """The rules as request arguments, checked here first so bad input never reaches the ledger."""
    given = {
        "keep_last": keep_last,
        "keep_hourly": keep_hourly,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
        "keep_within": keep_within,
        "tz": tz,
    }
    rules_from(given, "UTC")
    return {key: value for key, value in given.items() if value is not None}


@app.command("set")
def set_rules(
    ctx: typer.Context,
    vm: VmArg,
    keep_last: Last = None,
    keep_hourly: Hourly = None,
    keep_daily: Daily = None,
    keep_weekly: Weekly = None,
    keep_monthly: Monthly = None,
    keep_yearly: Yearly = None,
    keep_within: Within = None,
    tz: Zone = None,
    json: JsonOption = False,
) -> None:
    """Set the VM's own rules: they govern every snapshot no schedule's rules govern."""
    given = rules(
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, tz
    )
    result = ControllerApi(state(ctx).config()).set_retention(vm, given)
    if json:
        emit_json(result)
        return
    out.print(f"{vm}: {result['retention']} ({result['rules']['tz']})", markup=False)


@app.command()
def show(ctx: typer.Context, vm: VmArg, json: JsonOption = False) -> None:
    """Show the VM's own rules and each schedule's rules."""
    result = ControllerApi(state(ctx).config()).show_retention(vm)
    if json:
        emit_json(result)
        return
    own = result["own"]
    rows = [["vm (unscheduled)", own["retention"] if own else "keep everything"]]
    rows += [[f"schedule {s['name']}", s["retention"]] for s in result["schedules"]]
    table(f"retention of {vm}", ["group", "rules"], rows)


@app.command()
def clear(ctx: typer.Context, vm: VmArg) -> None:
    """Remove the VM's own rules (schedules keep theirs)."""
    result = ControllerApi(state(ctx).config()).clear_retention(vm)
    out.print(f"{vm}: own rules {'removed' if result['cleared'] else 'were not set'}")


@app.command()
def apply(
    ctx: typer.Context,
    vm: VmArg,
    keep_last: Last = None,
    keep_hourly: Hourly = None,
    keep_daily: Daily = None,
    keep_weekly: Weekly = None,
    keep_monthly: Monthly = None,
    keep_yearly: Yearly = None,
    keep_within: Within = None,
    tz: Zone = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    json: JsonOption = False,
) -> None:
    """Keep what any rule keeps (as restic and PBS combine them); delete the rest.

    Without keep-* options the rules stored for the VM and its schedules apply.
    """
    given = rules(
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, tz
    )
    result = ControllerApi(state(ctx).config()).apply_retention(vm, given, dry_run)
    if json:
        emit_json(result)
        return
    if not result["groups"]:
        out.print(f"{vm} has no retention rules: every snapshot is kept")
        return
    table(
        None,
        ["snapshot", "group", "decision", "why"],
        (
            [
                d["id"][:12],
                d["group"],
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

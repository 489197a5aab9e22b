"""vmsnap schedule: periodic snapshots of a VM, run by the controller."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from cli import retention
from cli.render import emit_json, out, table, when
from cli.state import state
from ledger.schedule import check_schedule_name, parse_cron, parse_schedule
from nodes.api import ControllerApi

app = typer.Typer(no_args_is_help=True, help="Periodic snapshots: set, list, clear, run now.")
VmArg = Annotated[str, typer.Argument(help="The VM the schedule snapshots.")]
NameArg = Annotated[
    str | None, typer.Argument(help="The schedule (default: every one / the only one).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _check(when_text: str | None, cron: str | None, tz: str | None, anchor: str | None) -> None:
    """Parse here first, so bad input is one line before anything reaches the ledger."""
    zone = tz or "UTC"
    if cron is not None and when_text is None:
        parse_cron(cron, zone)
    elif when_text is not None and cron is None:
        start = dt.date.fromisoformat(anchor) if anchor and _is_date(anchor) else dt.date.today()
        parse_schedule(when_text, zone, start)
    else:
        raise typer.BadParameter("give a schedule such as 'wed 22:00', or --cron, not both")


def _is_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


@app.command("set")
def set_schedule(
    ctx: typer.Context,
    vm: VmArg,
    when_text: Annotated[
        str | None,
        typer.Argument(
            metavar="WHEN",
            help="'wed 22:00', 'mon,thu 02:30', 'daily 03:00', 'monthly 1 03:00', "
            "'every 10d 02:00' or 'every 6h'.",
        ),
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help="A cron expression instead, e.g. '0 22 * * 3'.")
    ] = None,
    name: Annotated[str, typer.Option(help="The schedule's name (one VM may have several).")] = (
        "default"
    ),
    tz: Annotated[
        str | None, typer.Option("--tz", help="IANA time zone (default: the controller's).")
    ] = None,
    anchor: Annotated[
        str | None, typer.Option(help="Date 'every' counts from, YYYY-MM-DD (default: today).")
    ] = None,
    keep_last: retention.Last = None,
    keep_hourly: retention.Hourly = None,
    keep_daily: retention.Daily = None,
    keep_weekly: retention.Weekly = None,
    keep_monthly: retention.Monthly = None,
    keep_yearly: retention.Yearly = None,
    keep_within: retention.Within = None,
    json: JsonOption = False,
) -> None:
    """Create or replace a schedule; its keep-* rules govern the snapshots it takes."""
    check_schedule_name(name)
    _check(when_text, cron, tz, anchor)
    rules = retention.rules(
        keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, tz
    )
    args: dict[str, Any] = {"vm": vm, "name": name, **rules}
    for key, value in (("schedule", when_text), ("cron", cron), ("tz", tz), ("anchor", anchor)):
        if value is not None:
            args[key] = value
    shown = ControllerApi(state(ctx).config()).set_schedule(args)
    if json:
        emit_json(shown)
        return
    out.print(
        f"schedule {shown['name']} of {vm}: {shown['schedule']} ({shown['tz']}), "
        f"{shown['retention']}; next run {shown['next_run']}",
        markup=False,
    )


@app.command("list")
def list_schedules(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Argument(help="Only this VM's schedules.")] = None,
    json: JsonOption = False,
) -> None:
    """Every schedule with its next run (ISO 8601 with the schedule's UTC offset)."""
    found = ControllerApi(state(ctx).config()).schedules(vm)
    if json:
        emit_json(found)
        return
    table(
        "schedules",
        ["vm", "name", "when", "tz", "retention", "next run", "last run", "taken/skipped/failed"],
        (
            [
                s["vm"],
                s["name"],
                s["schedule"],
                s["tz"],
                s["retention"],
                s["next_run"] or "-",
                f"{s['last_run']} {s['last_outcome']}" if s["last_run"] else "-",
                f"{s['taken']}/{s['skipped']}/{s['failed']}",
            ]
            for s in found
        ),
    )


@app.command()
def clear(ctx: typer.Context, vm: VmArg, name: NameArg = None) -> None:
    """Remove one schedule of a VM, or all of them; the snapshots they took stay."""
    cleared = ControllerApi(state(ctx).config()).clear_schedule(vm, name)
    out.print(f"{vm}: removed {', '.join(cleared) if cleared else 'no schedule'}", markup=False)


@app.command("run-now")
def run_now(ctx: typer.Context, vm: VmArg, name: NameArg = None, json: JsonOption = False) -> None:
    """Run a schedule at once (snapshot, then its retention); its regular runs stay as they are."""
    run = ControllerApi(state(ctx).config()).run_schedule(vm, name)
    if json:
        emit_json(run)
        return
    what = f"snapshot {run['snapshot'][:12]}" if run["snapshot"] else "no snapshot"
    detail = f": {run['detail']}" if run["detail"] else ""
    out.print(f"schedule {run['name']} of {vm}: {run['outcome']}, {what}{detail}", markup=False)
    deleted = (run.get("retention") or {}).get("deleted") or []
    if deleted:
        out.print(f"retention deleted {len(deleted)}: {', '.join(d[:12] for d in deleted)}")


@app.command()
def runs(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Argument(help="Only this VM's runs.")] = None,
    name: Annotated[str | None, typer.Option(help="Only this schedule's runs.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the last N.")] = None,
    json: JsonOption = False,
) -> None:
    """The recorded runs of schedules: taken, skipped or failed, newest last."""
    found = ControllerApi(state(ctx).config()).schedule_runs(vm, name, limit)
    if json:
        emit_json(found)
        return
    table(
        "schedule runs",
        ["seq", "vm", "name", "slot", "outcome", "snapshot", "slots", "detail"],
        (
            [
                r["seq"],
                r["vm"],
                r["name"],
                when(r["slot_ms"]),
                r["outcome"],
                (r["snapshot"] or "-")[:12],
                r["slots"],
                r["detail"],
            ]
            for r in found
        ),
    )

"""The controller's schedule, retention and protection requests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from ledger import events
from ledger.contract import Entry
from ledger.errors import InputError, NotFound, UnknownVm
from ledger.rules import describe, has_rules, rules_from
from ledger.schedule import Schedule, check_schedule_name, parse_cron, parse_schedule
from ledger.service import Ledger
from ledger.zones import zone
from nodes.clock import Clock
from nodes.request_args import text
from nodes.retention_run import Retention
from nodes.scheduler import Scheduler, anchor_text
from nodes.server import Handler
from nodes.snapshots import Snapshots

Runner = Callable[..., Awaitable[Any]]
DEFAULT_NAME = "default"


class UnknownSchedule(NotFound):
    """The VM has no schedule of that name."""

    def __init__(self, vm: str, name: str) -> None:
        super().__init__(f"VM {vm!r} has no schedule {name!r}: see vmsnap schedule list {vm}")


class ScheduleApi:
    """Requests that set, list, clear and run schedules, and keep or protect snapshots."""

    def __init__(
        self,
        ledger: Ledger,
        snapshots: Snapshots,
        scheduler: Scheduler,
        retention: Retention,
        clock: Clock,
        default_tz: str,
        on_ledger: Runner,
    ) -> None:
        self.ledger = ledger
        self.snapshots = snapshots
        self.scheduler = scheduler
        self.retention = retention
        self.clock = clock
        self.default_tz = default_tz
        self._on_ledger = on_ledger

    def handlers(self) -> dict[str, Handler]:
        """The operations, by name."""
        return {
            "schedule.set": self.set_schedule,
            "schedule.list": self.list_schedules,
            "schedule.clear": self.clear_schedule,
            "schedule.run_now": self.run_now,
            "schedule.runs": self.list_runs,
            "retention.set": self.set_retention,
            "retention.show": self.show_retention,
            "retention.clear": self.clear_retention,
            "retention.apply": self.apply_retention,
            "snapshot.protect": self.protect,
        }

    async def _vm(self, args: dict[str, Any]) -> str:
        vm = text(args, "vm")
        if await self._on_ledger(self.ledger.projection.vm, vm) is None:
            raise UnknownVm(vm)
        return vm

    async def _append(self, vm: str, *batch: events.Event) -> None:
        version = await self._on_ledger(self.ledger.projection.stream_version, events.vm_stream(vm))
        entries = [Entry(event, version + i) for i, event in enumerate(batch)]
        await self._on_ledger(self.ledger.append, entries)

    def _parse(self, args: dict[str, Any]) -> Schedule:
        tz = str(args.get("tz") or self.default_tz)
        cron, when = args.get("cron"), args.get("schedule")
        if (cron is None) == (when is None):
            raise InputError("give a schedule such as 'wed 22:00', or --cron, not both")
        if cron is not None:
            if not isinstance(cron, str):
                raise InputError("--cron must be five cron fields")
            return parse_cron(cron, tz)
        if not isinstance(when, str):
            raise InputError("the schedule must be text such as 'wed 22:00'")
        anchor: dt.date | dt.datetime | None = None
        if when.strip().lower().startswith("every"):
            anchor = self._anchor(args.get("anchor"), when, tz)
        return parse_schedule(when, tz, anchor)

    def _anchor(self, given: Any, when: str, tz: str) -> dt.date | dt.datetime:
        if given is None:
            now = self.clock.now()
            return now if when.strip().lower().endswith("h") else now.astimezone(zone(tz)).date()
        try:
            return dt.date.fromisoformat(str(given))
        except ValueError:
            raise InputError(f"invalid --anchor {given!r}: use a date, YYYY-MM-DD") from None

    async def set_schedule(self, args: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a schedule of a VM, with the retention of its snapshots."""
        vm = await self._vm(args)
        name = check_schedule_name(str(args.get("name") or DEFAULT_NAME))
        schedule = self._parse(args)
        rules = rules_from(args, schedule.tz)
        event = events.ScheduleSet(
            self.ledger.now_ms(), vm, name, schedule.text, schedule.tz, anchor_text(schedule), rules
        )
        await self._append(vm, event)
        next_run = self.scheduler.plan(vm, name, schedule)
        return {"schedule": self._shown(events.as_dict(event), next_run)}

    def _shown(self, row: dict[str, Any], next_run: dt.datetime | None) -> dict[str, Any]:
        zone = ZoneInfo(row["tz"])
        shown = {
            "vm": row["vm"],
            "name": row["name"],
            "schedule": row["schedule"],
            "tz": row["tz"],
            "anchor": row["anchor"],
            "retention": describe(row["retention"]),
            "rules": row["retention"],
            "next_run": next_run.astimezone(zone).isoformat() if next_run else None,
        }
        for key in ("last_slot_ms", "last_outcome", "last_snapshot", "taken", "skipped", "failed"):
            if key in row:
                shown[key] = row[key]
        last = row.get("last_slot_ms")
        shown["last_run"] = (
            dt.datetime.fromtimestamp(last / 1000, dt.UTC)
            .astimezone(zone)
            .isoformat("T", "seconds")
            if last
            else None
        )
        return shown

    async def list_schedules(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every schedule (of one VM when given) with its next run."""
        vm = await self._vm(args) if args.get("vm") is not None else None
        rows = await self._on_ledger(self.ledger.projection.schedules, vm)
        planned = self.scheduler.next_runs()
        return {"schedules": [self._shown(r, planned.get((r["vm"], r["name"]))) for r in rows]}

    async def _named(self, vm: str, args: dict[str, Any]) -> list[str]:
        rows = await self._on_ledger(self.ledger.projection.schedules, vm)
        names = [r["name"] for r in rows]
        name = args.get("name")
        if name is None:
            return names
        if name not in names:
            raise UnknownSchedule(vm, str(name))
        return [str(name)]

    async def clear_schedule(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove one schedule of a VM, or all of them; the snapshots stay."""
        vm = await self._vm(args)
        names = await self._named(vm, args)
        if names:
            now = self.ledger.now_ms()
            await self._append(vm, *(events.ScheduleCleared(now, vm, n) for n in names))
        for name in names:
            self.scheduler.unplan(vm, name)
        return {"vm": vm, "cleared": names}

    async def run_now(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run a VM's schedule at once: snapshot, record the run, apply retention."""
        vm = await self._vm(args)
        names = await self._named(vm, args)
        if not names:
            raise NotFound(f"VM {vm!r} has no schedule: set one with vmsnap schedule set")
        if len(names) > 1:
            raise InputError(f"VM {vm!r} has schedules {', '.join(names)}: name one")
        return {"run": await self.scheduler.run_now(vm, names[0])}

    async def list_runs(self, args: dict[str, Any]) -> dict[str, Any]:
        """Recorded runs, newest last, optionally of one VM and schedule."""
        vm = await self._vm(args) if args.get("vm") is not None else None
        limit = args.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit <= 0):
            raise InputError("--limit must be a positive number")
        name = args.get("name")
        runs = await self._on_ledger(
            self.ledger.projection.schedule_runs, vm, str(name) if name else None, limit
        )
        return {"runs": runs}

    async def set_retention(self, args: dict[str, Any]) -> dict[str, Any]:
        """Set the VM's own rules (for snapshots no schedule's rules govern)."""
        vm = await self._vm(args)
        rules = rules_from(args, self.default_tz)
        if not has_rules(rules):
            raise InputError(
                "give at least one --keep-* rule (vmsnap retention clear removes them)"
            )
        await self._append(vm, events.RetentionPolicySet(self.ledger.now_ms(), vm, rules))
        return {"vm": vm, "retention": describe(rules), "rules": events.as_dict(rules)}

    async def show_retention(self, args: dict[str, Any]) -> dict[str, Any]:
        """The VM's own rules and each schedule's rules."""
        vm = await self._vm(args)
        own = await self._on_ledger(self.ledger.projection.retention_policy, vm)
        rows = await self._on_ledger(self.ledger.projection.schedules, vm)
        return {
            "vm": vm,
            "own": {"retention": describe(own), "rules": own} if own else None,
            "schedules": [
                {"name": r["name"], "retention": describe(r["retention"]), "rules": r["retention"]}
                for r in rows
            ],
        }

    async def clear_retention(self, args: dict[str, Any]) -> dict[str, Any]:
        """Remove the VM's own rules."""
        vm = await self._vm(args)
        own = await self._on_ledger(self.ledger.projection.retention_policy, vm)
        if own is not None:
            await self._append(vm, events.RetentionPolicyCleared(self.ledger.now_ms(), vm))
        return {"vm": vm, "cleared": own is not None}

    async def apply_retention(self, args: dict[str, Any]) -> dict[str, Any]:
        """Apply the given keep-* rules, or the rules stored for the VM, now."""
        vm = await self._vm(args)
        rules = rules_from(args, self.default_tz)
        dry_run = bool(args.get("dry_run", False))
        return await self.retention.apply(vm, dry_run, rules if has_rules(rules) else None)

    async def protect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Protect a committed snapshot from retention and deletion, or lift the protection."""
        snap = await self.snapshots.resolve(text(args, "id"))
        protected = args.get("protected", True)
        if not isinstance(protected, bool):
            raise InputError("protected must be true or false")
        if snap["status"] != "committed":
            raise InputError(f"snapshot {snap['id'][:12]} is {snap['status']}; only committed ones")
        if bool(snap.get("protected")) != protected:
            event = events.SnapshotProtected(
                self.ledger.now_ms(), snap["id"], snap["vm"], protected
            )
            await self._append(snap["vm"], event)
        return {"snapshot": snap["id"], "vm": snap["vm"], "protected": protected}

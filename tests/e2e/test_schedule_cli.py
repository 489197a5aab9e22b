"""The schedule, retention and protect commands against a running controller process."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.conftest import Deployment, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running(tmp_path_factory.mktemp("schedcli") / "deployment") as deployment:
        deployment.ok("vm", "register", "app-01", "--ip", "10.0.0.51", "--disk", "system:root:4M")
        yield deployment


def head(net: Deployment) -> Any:
    return net.json("ledger", "head")


def test_schedule_set_list_and_clear_show_next_runs_in_iso_with_the_offset(
    net: Deployment,
) -> None:
    shown = net.json(
        "schedule", "set", "app-01", "wed 22:00", "--tz", "Europe/Berlin", "--name", "weekly"
    )
    assert shown["schedule"] == "wed 22:00"
    net.ok("schedule", "set", "app-01", "--cron", "0 3 * * *", "--tz", "UTC", "--name", "nightly")
    listed = {s["name"]: s for s in net.json("schedule", "list", "app-01")}
    assert set(listed) == {"weekly", "nightly"}
    weekly = dt.datetime.fromisoformat(listed["weekly"]["next_run"])
    assert weekly.utcoffset() in (dt.timedelta(hours=1), dt.timedelta(hours=2))
    assert (weekly.weekday(), weekly.hour, weekly.minute) == (2, 22, 0)
    nightly = dt.datetime.fromisoformat(listed["nightly"]["next_run"])
    assert (nightly.utcoffset(), nightly.hour) == (dt.timedelta(0), 3)
    assert listed["nightly"]["schedule"] == "cron 0 3 * * *"
    table = net.ok("schedule", "list").stdout
    assert "weekly" in table and "nightly" in table
    assert "nightly" in net.ok("schedule", "clear", "app-01", "nightly").stdout
    assert [s["name"] for s in net.json("schedule", "list", "app-01")] == ["weekly"]
    net.ok("schedule", "clear", "app-01")
    assert net.json("schedule", "list", "app-01") == []
    types = [e["type"] for e in net.json("ledger", "log", "--vm", "app-01")]
    assert types.count("ScheduleSet") == 2 and types.count("ScheduleCleared") == 2


def test_run_now_takes_a_snapshot_records_the_run_and_applies_the_schedule_rules(
    net: Deployment,
) -> None:
    net.ok("schedule", "set", "app-01", "daily 03:00", "--keep-last", "2")
    first = net.json("schedule", "run-now", "app-01")
    assert (first["outcome"], first["slots"]) == ("taken", 0)
    net.ok("schedule", "run-now", "app-01")
    third = net.json("schedule", "run-now", "app-01")
    assert third["retention"]["deleted"] == [first["snapshot"]]
    live = [s for s in net.json("snapshot", "list", "app-01") if s["status"] == "committed"]
    assert len(live) == 2
    assert {s["schedule"] for s in live} == {"default"}
    recorded = net.json("schedule", "runs", "app-01")
    assert [r["outcome"] for r in recorded][-3:] == ["taken", "taken", "taken"]
    assert "taken" in net.ok("schedule", "runs", "app-01", "--limit", "1").stdout


def test_protected_snapshot_survives_retention_and_refuses_delete(net: Deployment) -> None:
    net.ok("snapshot", "create", "app-01")
    oldest = next(s for s in net.json("snapshot", "list", "app-01") if s["status"] == "committed")
    net.ok("snapshot", "protect", oldest["id"][:12])
    for _ in range(3):
        net.ok("schedule", "run-now", "app-01")
    refused = net.run("snapshot", "delete", oldest["id"])
    assert refused.exit_code == 5
    assert "protected" in refused.output and refused.output.count("\n") == 1
    applied = net.json("retention", "apply", "app-01", "--keep-last", "1")
    kept = [d for d in applied["decisions"] if d["keep"]]
    assert {d["id"] for d in kept} >= {oldest["id"]}
    assert next(d for d in kept if d["id"] == oldest["id"])["reasons"] == ["protected"]
    assert len(kept) == 2
    net.ok("snapshot", "unprotect", oldest["id"])
    assert net.json("retention", "apply", "app-01", "--keep-last", "1")["deleted"] == [oldest["id"]]


def test_vm_rules_govern_unscheduled_snapshots_and_dry_run_changes_nothing(
    net: Deployment,
) -> None:
    net.ok("vm", "register", "own-01", "--ip", "10.0.0.52", "--disk", "system:root:4M")
    for _ in range(3):
        net.ok("snapshot", "create", "own-01")
    assert "no retention rules" in net.ok("retention", "apply", "own-01").stdout
    net.ok("retention", "set", "own-01", "--keep-last", "1", "--tz", "Europe/Berlin")
    shown = net.json("retention", "show", "own-01")
    assert shown["own"]["retention"] == "keep-last 1"
    before = head(net)
    preview = net.json("retention", "apply", "own-01", "--dry-run")
    assert [d["keep"] for d in preview["decisions"]] == [True, False, False]
    assert {d["group"] for d in preview["decisions"]} == {"vm"}
    assert head(net) == before, "a dry run writes nothing"
    done = net.json("retention", "apply", "own-01")
    assert len(done["deleted"]) == 2
    net.ok("retention", "clear", "own-01")
    assert net.json("retention", "show", "own-01")["own"] is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["schedule", "set", "app-01", "someday 22:00"], 2, "unknown weekday"),
        (["schedule", "set", "app-01", "wed 22:00", "--keep-last", "0"], 2, "at least 1"),
        (["schedule", "set", "app-01", "wed 22:00", "--tz", "Mars/Olympus"], 2, "time zone"),
        (["schedule", "set", "nobody", "wed 22:00"], 4, "nobody"),
        (["schedule", "set", "app-01", "--cron", "61 * * * *"], 2, "minute"),
        (["schedule", "set", "app-01", "wed 22:00", "--cron", "0 22 * * 3"], 2, "not both"),
        (["schedule", "set", "app-01", "every 10d 02:00", "--anchor", "soon"], 2, "anchor"),
        (["schedule", "set", "app-01", "wed 22:00", "--name", "a b"], 2, "schedule name"),
        (["schedule", "clear", "app-01", "missing"], 4, "no schedule 'missing'"),
        (["schedule", "run-now", "nobody"], 4, "nobody"),
        (["retention", "set", "app-01"], 2, "at least one --keep"),
        (["retention", "set", "app-01", "--keep-within", "3x"], 2, "keep-within"),
        (["retention", "apply", "app-01", "--keep-daily", "abc"], 2, "--keep-daily"),
        (["snapshot", "protect", "zz"], 4, "unknown snapshot"),
    ],
)
def test_bad_input_is_one_line_a_non_zero_exit_and_no_ledger_write(
    net: Deployment, args: list[str], code: int, message: str
) -> None:
    before = head(net)
    result = net.run(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    assert head(net) == before

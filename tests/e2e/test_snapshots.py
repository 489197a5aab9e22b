"""Snapshots on a real local network, with qemu-io as the VM writing through NBD."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.anvil import fund, running_anvil
from tests.cli.conftest import Deployment, make_deployment
from tests.e2e.processes import alter_stored_copies, kill_node, runfile
from tests.e2e.qemu import qemu_img, qemu_io, tool
from tests.postgres import PostgresServer

pytestmark = pytest.mark.slow
MiB = 1 << 20
KiB = 1 << 10
CHUNK = 64 * KiB


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "anvil", "replicas"])
def net(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The snapshot suite four times: the embedded chain with the projection in SQLite, then
    in PostgreSQL; a real JSON-RPC node (anvil) as the chain; the ledger on replicas."""
    deployment = make_deployment(tmp_path_factory.mktemp("snap") / "deployment")
    with contextlib.ExitStack() as stack:
        if request.param == "anvil":
            rpc = stack.enter_context(running_anvil())
            config = deployment.config.read_text()
            config = config.replace('backend = "eth-tester"', 'backend = "rpc"', 1)
            deployment.config.write_text(config.replace('rpc_url = ""', f'rpc_url = "{rpc}"', 1))
            fund(rpc, *(deployment.account(r) for r in ("admin", "operator", "deleter")))
        if request.param == "replicas":
            config = deployment.config.read_text()
            deployment.config.write_text(config.replace("replicas = false", "replicas = true", 1))
        yield from _network(request, deployment)


def _network(request: pytest.FixtureRequest, deployment: Deployment) -> Iterator[Deployment]:
    url = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.database()
        config = deployment.config.read_text()
        deployment.config.write_text(config.replace('\nurl = ""', f'\nurl = "{url}"', 1))
    deployment.ok("up")
    try:
        deployment.ok("vm", "register", "db-01", "--ip", "10.0.0.21", "--disk", "system:root:64M")
        if url is not None:
            assert rows_in(url, "vms") == 1, "the controller's projection is in PostgreSQL"
        backend = "rpc" if request.param == "anvil" else "eth-tester"
        assert deployment.json("ledger", "head")["backend"] == backend
        replicas = deployment.json("ledger", "nodes")
        assert len(replicas) == (4 if request.param == "replicas" else 0)
        yield deployment
    finally:
        deployment.run("down")


def rows_in(url: str, table: str) -> int:
    engine = create_engine(url)
    with engine.connect() as db:
        count = int(db.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    engine.dispose()
    return count


def _url(net: Deployment) -> str:
    return str(net.ok("disk", "url", "db-01", "root").stdout.strip())


def _export(net: Deployment, target: Path, snapshot: str | None = None, vm: str = "db-01") -> bytes:
    if snapshot:
        vm = next(s["vm"] for s in net.json("snapshot", "list") if s["id"] == snapshot)
    args = ["disk", "export", vm, "root", str(target), "--force"]
    if snapshot:
        args += ["--snapshot", snapshot]
    net.ok(*args)
    return target.read_bytes()


def _runfile(net: Deployment, node: str) -> dict[str, Any]:
    return runfile(net.root, node)


def _kill(net: Deployment, node: str) -> None:
    kill_node(net.root, node)


def test_first_snapshot_is_full_and_equals_the_disk(net: Deployment, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    rng = random.Random(5)
    with image.open("wb") as out:
        out.truncate(64 * MiB)
        for offset in range(0, 48 * MiB, 4 * MiB):
            out.seek(offset)
            out.write(rng.randbytes(MiB))
    net.ok("disk", "import", "db-01", "root", str(image))
    snap = net.json("snapshot", "create", "db-01")
    assert snap["status"] == "committed"
    assert snap["parent"] is None
    (disk,) = snap["disk_details"]
    assert disk["incremental"] is False
    assert disk["chunks"] == 12 * MiB // CHUNK
    assert _export(net, tmp_path / "out.raw", snap["id"]) == image.read_bytes()
    assert net.json("snapshot", "verify", snap["id"])["ok"] is True
    audit = net.json("audit", "snapshot", snap["id"][:12])
    record = audit["contract"]
    assert (record["status"], record["root"]) == ("committed", "0x" + snap["root"])
    assert record["vm_stream_matches"] is True and record["seq"] == snap["committed_seq"]
    assert audit["data"]["ok"] is True


def test_incremental_snapshot_reads_only_the_dirty_chunks(net: Deployment, tmp_path: Path) -> None:
    url = _url(net)
    before = _export(net, tmp_path / "before.raw")
    qemu_io(url, "write -P 0x41 0 4k", "write -P 0x42 10M 4k", "write -P 0x43 60M 128k", "flush")
    snap = net.json("snapshot", "create", "db-01")
    (disk,) = snap["disk_details"]
    assert disk["incremental"] is True
    assert disk["changed_chunks"] == 4
    assert disk["bytes_read"] == 2 * 4 * KiB + 2 * CHUNK, "one block of each of two chunks"
    expected = bytearray(before)
    expected[0 : 4 * KiB] = b"\x41" * 4 * KiB
    expected[10 * MiB : 10 * MiB + 4 * KiB] = b"\x42" * 4 * KiB
    expected[60 * MiB : 60 * MiB + 128 * KiB] = b"\x43" * 128 * KiB
    assert _export(net, tmp_path / "incr.raw", snap["id"]) == bytes(expected)
    listed = net.json("snapshot", "list", "db-01")
    assert [s["id"] for s in listed][-1] == snap["id"]
    assert listed[-1]["parent"] == listed[-2]["id"]


def _writer(url: str, rounds: int, stop: threading.Event) -> subprocess.Popen[str]:
    """qemu-io writing pattern k to chunk k+200, k = 1, 2, ... one write after another."""
    commands: list[str] = []
    for k in range(1, rounds + 1):
        commands += ["-c", f"write -P {k} {(200 + k) * CHUNK} {CHUNK}"]
    return subprocess.Popen(
        [tool("qemu-io"), "-f", "raw", *commands, url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_snapshot_taken_while_the_vm_writes_is_one_instant(
    net: Deployment, tmp_path: Path
) -> None:
    url = _url(net)
    qemu_io(url, f"write -z {201 * CHUNK} {250 * CHUNK}", "flush")
    writer = _writer(url, 250, threading.Event())
    try:
        time.sleep(0.2)
        snap = net.json("snapshot", "create", "db-01")
    finally:
        _err = writer.communicate(timeout=120)[1]
    assert writer.returncode == 0, _err
    image = _export(net, tmp_path / "during.raw", snap["id"])
    written = [
        k
        for k in range(1, 251)
        if image[(200 + k) * CHUNK : (201 + k) * CHUNK] == bytes([k]) * CHUNK
    ]
    untouched = [
        k for k in range(1, 251) if image[(200 + k) * CHUNK : (201 + k) * CHUNK] == bytes(CHUNK)
    ]
    assert written == list(range(1, len(written) + 1)), "the snapshot holds a prefix of the writes"
    assert len(written) + len(untouched) == 250, "no chunk is torn or from another write"
    assert net.json("snapshot", "verify", snap["id"])["ok"] is True


def test_snapshot_verify_fails_loudly_when_every_copy_of_a_chunk_is_altered(
    net: Deployment, tmp_path: Path
) -> None:
    net.ok("vm", "register", "victim-01", "--ip", "10.0.0.22", "--disk", "system:root:16M")
    victim = random.Random(11).randbytes(CHUNK)
    image = tmp_path / "victim.raw"
    image.write_bytes(bytes(3 * MiB) + victim)
    net.ok("disk", "import", "victim-01", "root", str(image))
    snap = net.json("snapshot", "create", "victim-01")
    assert alter_stored_copies(net.root, net.codec().chunk_id(victim)) == 2
    result = net.run("snapshot", "verify", snap["id"])
    assert result.exit_code == 6
    assert "failed verification" in result.output
    audited = net.run("audit", "snapshot", snap["id"])
    assert audited.exit_code == 6 and "DOES NOT match the contract's record" in audited.output
    assert net.json("ledger", "verify")["ok"] is True


def test_a_snapshot_that_cannot_finish_is_undone_and_recorded_failed(net: Deployment) -> None:
    _kill(net, "transfer-1")
    result = net.run("snapshot", "create", "db-01")
    assert result.exit_code != 0
    assert "failed and was undone" in result.output
    assert result.output.count("\n") == 1
    failed = net.json("snapshot", "list", "db-01")[-1]
    assert failed["status"] == "failed"
    net.ok("up")
    again = net.json("snapshot", "create", "db-01")
    assert again["status"] == "committed"
    assert net.json("snapshot", "verify", again["id"])["ok"] is True


def test_kill_9_of_the_controller_mid_snapshot_is_undone_on_restart(
    net: Deployment, tmp_path: Path
) -> None:
    big = tmp_path / "big.raw"
    big.write_bytes(random.Random(8).randbytes(48 * MiB))
    net.ok("disk", "import", "db-01", "root", str(big))
    committed = [
        s["id"] for s in net.json("snapshot", "list", "db-01") if s["status"] == "committed"
    ]
    snapshot = subprocess.Popen(
        ["vmsnap", "--config", str(net.config), "snapshot", "create", "db-01", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pending = [s for s in net.json("snapshot", "list", "db-01") if s["status"] == "pending"]
        if pending:
            break
        time.sleep(0.02)
    _kill(net, "controller")
    snapshot.communicate(timeout=30)
    net.ok("up")
    after = net.json("snapshot", "create", "db-01")
    assert after["status"] == "committed"
    listed = {s["id"]: s for s in net.json("snapshot", "list", "db-01")}
    assert not [s for s in listed.values() if s["status"] == "pending"]
    for sid in [*committed, after["id"]]:
        assert net.json("snapshot", "verify", sid)["ok"] is True
    assert _export(net, tmp_path / "after.raw", after["id"])[: 48 * MiB] == big.read_bytes()
    qemu_img("info", "-f", "raw", str(tmp_path / "after.raw"))


def _all_chunks(net: Deployment) -> set[str]:
    from nodes.config import load_config

    config = load_config(net.config, {})
    found: set[str] = set()
    for node in ("backup-1", "backup-2", "backup-3"):
        run = _runfile(net, node)
        from nodes.client import call_sync

        reply = call_sync(
            run["host"],
            run["port"],
            config.secret(),
            "chunk.list",
            {"after": b"", "limit": 65536},
            peer=node,
        )
        found.update(c.hex() for c in reply["ids"])
    return found


def test_delete_keeps_children_whole_and_gc_leaves_no_orphan(
    net: Deployment, tmp_path: Path
) -> None:
    net.ok("vm", "register", "del-01", "--ip", "10.0.0.23", "--disk", "system:root:8M")
    url = str(net.ok("disk", "url", "del-01", "root").stdout.strip())
    image = tmp_path / "del.raw"
    image.write_bytes(random.Random(21).randbytes(2 * MiB))
    net.ok("disk", "import", "del-01", "root", str(image))
    first = net.json("snapshot", "create", "del-01")
    qemu_io(url, "write -P 0x61 0 64k", "flush")
    second = net.json("snapshot", "create", "del-01")
    before = _all_chunks(net)
    deleted = net.json("snapshot", "delete", first["id"][:10])
    assert deleted["snapshot"] == first["id"]
    assert deleted["gc"]["chunks"] >= 2, "the replaced chunk and the first manifest go"
    after = _all_chunks(net)
    assert after < before
    assert net.json("snapshot", "verify", second["id"])["ok"] is True
    listed = {s["id"]: s["status"] for s in net.json("snapshot", "list", "del-01")}
    assert listed[first["id"]] == "deleted"
    history = net.json("ledger", "log", "--vm", "del-01")
    types = [e["type"] for e in history]
    assert types[-3:] == ["InitialSnapshotDeleted", "TargetStagingDeleted", "TargetSnapshotDeleted"]
    assert {e["sender"] for e in history[-3:]} == {net.account("deleter")}
    assert {e["sender"] for e in history[:-3]} == {net.account("operator")}
    collected = [e for e in net.json("ledger", "log") if e["type"] == "GarbageCollected"]
    assert collected[-1]["sender"] == net.account("deleter")
    again = net.run("snapshot", "delete", first["id"])
    assert again.exit_code == 5
    assert "only committed snapshots" in again.output
    verify = net.run("snapshot", "verify", first["id"])
    assert verify.exit_code == 6
    assert "deleted" in verify.output


def test_gc_after_deleting_everything_leaves_no_chunk_of_that_vm(
    net: Deployment, tmp_path: Path
) -> None:
    for snap in net.json("snapshot", "list"):
        if snap["status"] == "committed":
            net.ok("snapshot", "delete", snap["id"], "--no-gc")
    report = net.json("backup", "gc")
    assert report["live_snapshots"] == 0
    assert report["referenced"] == 0
    assert _all_chunks(net) == set()
    assert net.json("ledger", "verify")["ok"] is True


@pytest.mark.parametrize("victim", ["backup-2", "transfer-1"])
def test_kill_9_of_a_data_node_mid_snapshot_finishes_or_undoes_it(
    net: Deployment, tmp_path: Path, victim: str
) -> None:
    name = f"crash-{victim}"
    net.ok("vm", "register", name, "--ip", "10.0.0.40", "--disk", "system:root:64M")
    image = tmp_path / "crash.raw"
    image.write_bytes(random.Random(len(victim)).randbytes(48 * MiB))
    net.ok("disk", "import", name, "root", str(image))
    snapshot = subprocess.Popen(
        [os.sys.executable, "-m", "cli", "--config", str(net.config), "snapshot", "create", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(s["status"] == "pending" for s in net.json("snapshot", "list", name)):
            break
        time.sleep(0.02)
    time.sleep(0.3)
    _kill(net, victim)
    snapshot.communicate(timeout=120)
    (outcome,) = net.json("snapshot", "list", name)
    assert outcome["status"] in {"committed", "failed"}
    if victim.startswith("backup"):
        assert outcome["status"] == "committed", "R copies still fit on the two live nodes"
    net.ok("up")
    if victim.startswith("backup"):
        net.json("backup", "repair")
    for snap in net.json("snapshot", "list"):
        if snap["status"] == "committed":
            assert net.json("snapshot", "verify", snap["id"])["ok"] is True
    again = net.json("snapshot", "create", name)
    assert again["status"] == "committed"
    assert _export(net, tmp_path / "again.raw", again["id"])[: 48 * MiB] == image.read_bytes()


def test_snapshot_verify_fails_when_a_manifest_is_altered_on_every_replica(
    net: Deployment, tmp_path: Path
) -> None:
    net.ok("vm", "register", "mani-01", "--ip", "10.0.0.41", "--disk", "system:root:4M")
    image = tmp_path / "m.raw"
    image.write_bytes(random.Random(41).randbytes(MiB))
    net.ok("disk", "import", "mani-01", "root", str(image))
    snap = net.json("snapshot", "create", "mani-01")
    manifest_id = bytes.fromhex(snap["disk_details"][0]["manifest"])
    assert alter_stored_copies(net.root, manifest_id, at=1, flip=0x01) == 2
    result = net.run("snapshot", "verify", snap["id"])
    assert result.exit_code == 6
    assert "manifest unreadable" in result.output


def test_retention_keep_last_deletes_the_oldest_through_the_delete_workflow(
    net: Deployment, tmp_path: Path
) -> None:
    net.ok("vm", "register", "keep-01", "--ip", "10.0.0.42", "--disk", "system:root:4M")
    url = str(net.ok("disk", "url", "keep-01", "root").stdout.strip())
    taken = []
    for i in range(4):
        qemu_io(url, f"write -P {i + 1} {i * 64}k 64k", "flush")
        taken.append(net.json("snapshot", "create", "keep-01")["id"])
    preview = net.json("retention", "apply", "keep-01", "--keep-last", "3", "--dry-run")
    assert preview["deleted"] == []
    assert [d["id"] for d in preview["decisions"] if not d["keep"]] == [taken[0]]
    assert {s["status"] for s in net.json("snapshot", "list", "keep-01")} == {"committed"}
    applied = net.json("retention", "apply", "keep-01", "--keep-last", "3")
    assert applied["deleted"] == [taken[0]]
    statuses = {s["id"]: s["status"] for s in net.json("snapshot", "list", "keep-01")}
    assert statuses == {taken[0]: "deleted", **{sid: "committed" for sid in taken[1:]}}
    log = net.json("ledger", "log", "--vm", "keep-01")
    reasons = [e["fields"]["reason"] for e in log if e["type"] == "TargetSnapshotDeleted"]
    assert reasons == ["retention (all): beyond keep-last 3"]
    for sid in taken[1:]:
        assert net.json("snapshot", "verify", sid)["ok"] is True
    bad = net.run("retention", "apply", "keep-01", "--keep-within", "3x")
    assert bad.exit_code == 2
    assert bad.output.count("\n") == 1

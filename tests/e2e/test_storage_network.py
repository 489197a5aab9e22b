"""The data plane as real processes: business volumes over NBD, the transfer pipeline,
the replicated backup chunk store, and what survives killing nodes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import blake3
import pytest

from nodes.config import load_config
from nodes.errors import RemoteError
from nodes.manifest import Manifest
from nodes.manifest_store import PIECE, load_manifest, store_manifest
from nodes.peers import Peers, node_names
from nodes.replication import BackupCluster
from tests.cli.conftest import Deployment, make_deployment
from tests.e2e.processes import kill_node
from tests.e2e.qemu import qemu_img, qemu_io

pytestmark = pytest.mark.slow
MiB = 1 << 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = make_deployment(tmp_path_factory.mktemp("storage") / "deployment")
    deployment.ok("up")
    try:
        deployment.ok(
            "vm",
            "register",
            "web-01",
            "--ip",
            "10.0.0.11",
            "--disk",
            "system:root:64M",
            "--disk",
            "data:db:32M",
        )
        yield deployment
    finally:
        deployment.run("down")


def _url(net: Deployment, resource: str = "root") -> str:
    return str(net.ok("disk", "url", "web-01", resource).stdout.strip())


def _call(net: Deployment, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
    config = load_config(net.config, {})

    async def go() -> dict[str, Any]:
        peers = Peers(config, "test")
        try:
            return await peers.call(node, op, args)
        finally:
            await peers.close()

    return asyncio.run(go())


def _run(net: Deployment) -> dict[str, dict[str, Any]]:
    folder = net.root / "data" / "run"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_up_starts_the_default_topology(net: Deployment) -> None:
    rows = net.json("status")
    assert sorted((r["name"], r["role"]) for r in rows) == [
        ("backup-1", "backup"),
        ("backup-2", "backup"),
        ("backup-3", "backup"),
        ("business-1", "business"),
        ("controller", "controller"),
        ("transfer-1", "transfer"),
    ]
    assert all(r["state"] == "up" and r["host"] == "127.0.0.1" and r["port"] for r in rows)


def test_transfer_and_backup_nodes_yield_the_cpu_to_the_business_node(net: Deployment) -> None:
    """Their niceness holds across sessions: each node leads its own, and autogroups rank them."""
    niceness = {}
    for name, run in _run(net).items():
        pid = int(run["pid"])
        group = Path(f"/proc/{pid}/autogroup")
        session = int(group.read_text().split()[-1]) if group.exists() else None
        niceness[name] = (os.getpriority(os.PRIO_PROCESS, pid), session)
    expected = {"controller": 0, "business-1": 0, "transfer-1": 10}
    expected |= {f"backup-{i}": 10 for i in (1, 2, 3)}
    autogroups = Path("/proc/self/autogroup").exists()
    assert niceness == {name: (n, n if autogroups else None) for name, n in expected.items()}


def test_registered_disks_are_placed_on_a_business_node_on_the_ledger(net: Deployment) -> None:
    vm = net.json("vm", "show", "web-01")
    assert {d["resource_id"]: d["node"] for d in vm["vm"]["disks"]} == {
        "root": "business-1",
        "db": "business-1",
    }
    placed = [e for e in vm["events"] if e["type"] == "DiskPlaced"]
    assert sorted(e["fields"]["resource_id"] for e in placed) == ["db", "root"]


def test_disk_url_serves_writes_and_reads_to_real_nbd_clients(net: Deployment) -> None:
    url = _url(net)
    assert url.startswith("nbd://127.0.0.1:") and url.endswith("/web-01/root")
    qemu_io(url, "write -P 0xab 0 1M", "write -P 0xcd 8M 64k", "flush")
    qemu_io(url, "read -P 0xab 0 1M", "read -P 0xcd 8M 64k", "read -P 0 9M 1M")
    info = json.loads(qemu_img("info", "--output=json", "-f", "raw", url).stdout)
    assert info["virtual-size"] == 64 * MiB


def test_qemu_img_convert_of_the_export_equals_what_was_written(
    net: Deployment, tmp_path: Path
) -> None:
    url = _url(net, "db")
    source = tmp_path / "source.raw"
    data = bytearray(32 * MiB)
    data[MiB : 3 * MiB] = random.Random(1).randbytes(2 * MiB)
    data[20 * MiB : 20 * MiB + 4096] = b"\x5a" * 4096
    source.write_bytes(bytes(data))
    qemu_img("convert", "-n", "-f", "raw", "-O", "raw", str(source), url)
    copy = tmp_path / "copy.raw"
    qemu_img("convert", "-f", "raw", "-O", "raw", url, str(copy))
    assert copy.read_bytes() == bytes(data)


def test_import_export_round_trip_keeps_holes(net: Deployment, tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    rng = random.Random(2)
    with image.open("wb") as out:
        out.truncate(20 * MiB)
        for offset in (0, 5 * MiB + 4096, 19 * MiB):
            out.seek(offset)
            out.write(rng.randbytes(300_000))
    result = net.json("disk", "import", "web-01", "root", str(image))
    assert result["bytes_written"] < 2 * MiB
    assert result["bytes_zero"] > 15 * MiB
    exported = tmp_path / "exported.raw"
    net.ok("disk", "export", "web-01", "root", str(exported))
    assert exported.stat().st_size == 64 * MiB
    assert exported.read_bytes()[: 20 * MiB] == image.read_bytes()
    assert exported.read_bytes()[20 * MiB :].count(0) == 44 * MiB
    assert exported.stat().st_blocks * 512 < 8 * MiB


def test_qcow2_images_import_through_qemu_img(net: Deployment, tmp_path: Path) -> None:
    raw = tmp_path / "small.raw"
    raw.write_bytes(b"\x11" * MiB + bytes(MiB) + b"\x22" * MiB)
    qcow2 = tmp_path / "small.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    net.ok("disk", "import", "web-01", "db", str(qcow2))
    qemu_io(_url(net, "db"), "read -P 0x11 0 1M", "read -P 0 1M 1M", "read -P 0x22 2M 1M")


def test_bad_imports_are_one_line_and_change_nothing(net: Deployment, tmp_path: Path) -> None:
    url = _url(net, "db")
    qemu_io(url, "write -P 0x77 0 64k", "flush")
    big = tmp_path / "big.raw"
    with big.open("wb") as out:
        out.truncate(33 * MiB)
    result = net.run("disk", "import", "web-01", "db", str(big))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {big} is {33 * MiB} bytes, larger than disk db")
    assert result.output.count("\n") == 1
    missing = net.run("disk", "import", "web-01", "db", str(tmp_path / "nope.raw"))
    assert missing.exit_code == 2
    assert missing.output == f"error: no such image: {tmp_path / 'nope.raw'}\n"
    unknown = net.run("disk", "import", "web-01", "swap", str(big))
    assert unknown.exit_code == 4
    qemu_io(url, "read -P 0x77 0 64k")


def _transfer(net: Deployment, view: str, **extra: Any) -> dict[str, Any]:
    args = {"node": "business-1", "vm": "web-01", "resource_id": "root", "view": view, **extra}
    return _call(net, "transfer-1", "transfer.process", args)


def _cluster_get(net: Deployment, ids: list[bytes]) -> dict[bytes, bytes]:
    config = load_config(net.config, {})

    async def go() -> dict[bytes, bytes]:
        peers = Peers(config, "test")
        try:
            cluster = BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)
            return await cluster.get(ids)
        finally:
            await peers.close()

    return asyncio.run(go())


def test_a_manifest_of_several_pieces_is_stored_in_one_round_and_loads_back(
    net: Deployment,
) -> None:
    config = load_config(net.config, {})
    entries = tuple((i, blake3.blake3(i.to_bytes(8, "big")).digest()) for i in range(150_000))
    manifest = Manifest("f" * 64, "web-01", "root", len(entries) << 16, 1 << 16, None, entries)
    assert len(manifest.encode()) > PIECE, "the manifest needs two pieces"

    async def go() -> tuple[bytes, Manifest, list[str]]:
        peers = Peers(config, "test")
        calls: list[str] = []
        call = peers.call

        async def counted(node: str, op: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            calls.append(op)
            return await call(node, op, *args, **kwargs)

        peers.call = counted  # type: ignore[method-assign]
        try:
            cluster = BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)
            manifest_id = await store_manifest(cluster, net.codec(), manifest)
            stored = list(calls)
            return manifest_id, await load_manifest(cluster, net.codec(), manifest_id), stored
        finally:
            await peers.close()

    manifest_id, loaded, stored = asyncio.run(go())
    assert loaded == manifest and len(manifest_id) == 32
    # One round: every existence check (one per node) comes before the first put, as the
    # pieces and their index go together.
    first_put = stored.index("chunk.put_many")
    assert set(stored[:first_put]) == {"chunk.has_many"}
    assert len(stored[:first_put]) <= len(node_names(config, "backup"))
    assert set(stored[first_put:]) == {"chunk.put_many"}


def test_a_childs_manifest_sends_only_the_pieces_of_its_changed_range(net: Deployment) -> None:
    config = load_config(net.config, {})
    entries = tuple((i, blake3.blake3(b"child %d" % i).digest()) for i in range(40_000))
    parent = Manifest("a" * 64, "web-01", "root", len(entries) << 16, 1 << 16, None, entries)
    child = parent.changed("b" * 64, {20_000: bytes(32)})

    async def go() -> tuple[list[int], Manifest]:
        peers = Peers(config, "test")
        sent: list[int] = []
        call = peers.call

        async def counted(node: str, op: str, args: dict[str, Any], **kwargs: Any) -> Any:
            if op == "chunk.put_many":
                sent.append(sum(len(blob) for _id, blob in args["items"]))
            return await call(node, op, args, **kwargs)

        peers.call = counted  # type: ignore[method-assign]
        try:
            cluster = BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)
            await store_manifest(cluster, net.codec(), parent)
            parent_sent = sum(sent)
            child_id = await store_manifest(cluster, net.codec(), child)
            return [parent_sent, sum(sent) - parent_sent], await load_manifest(
                cluster, net.codec(), child_id
            )
        finally:
            await peers.close()

    (parent_sent, child_sent), loaded = asyncio.run(go())
    assert loaded == child
    # One range of 4,096 entries (about 160 KB, twice), its glue and the index, not 1.6 MB.
    assert child_sent < parent_sent / 4, (parent_sent, child_sent)


def test_transfer_stores_the_frozen_view_not_later_writes(net: Deployment) -> None:
    url = _url(net)
    target = {"vm": "web-01", "resource_id": "root"}
    qemu_io(url, "write -P 0x31 0 256k", "write -P 0x32 1M 128k", "flush")
    _call(net, "business-1", "volume.freeze", {**target, "view": "v1"})
    qemu_io(url, "write -P 0x99 0 64k", "flush")
    result = _transfer(net, "v1", since=0)
    chunk_map = {idx: cid for idx, cid in result["chunk_map"]}
    assert result["new_chunks"] + result["deduplicated"] == sum(
        v is not None for v in chunk_map.values()
    )
    blobs = _cluster_get(net, [chunk_map[0]])
    codec = net.codec()
    first = codec.decode(chunk_map[0], blobs[chunk_map[0]])
    assert first == b"\x31" * 65536
    _call(net, "business-1", "volume.commit_base", {**target, "view": "v1"})
    _call(net, "business-1", "volume.release", {**target, "view": "v1"})
    _call(net, "business-1", "volume.freeze", {**target, "view": "v2"})
    again = _transfer(net, "v2")
    assert [idx for idx, _cid in again["chunk_map"]] == [0]
    _call(net, "business-1", "volume.release", {**target, "view": "v2"})


def _committed_copies(net: Deployment, chunk_id: bytes) -> int:
    """On how many backup nodes a chunk's index row is committed (read by another connection)."""
    query = "SELECT COUNT(*) FROM chunks WHERE id = ?"
    found = 0
    for node in ("backup-1", "backup-2", "backup-3"):
        index = net.root / "data" / "nodes" / node / "chunks" / "index.sqlite"
        with closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
            found += int(db.execute(query, (chunk_id,)).fetchone()[0])
    return found


def test_a_transfer_returns_with_every_new_copy_committed_on_r_backup_nodes(
    net: Deployment,
) -> None:
    url = _url(net)
    target = {"vm": "web-01", "resource_id": "root", "view": "durable"}
    qemu_io(url, "write -P 0x5a 4M 192k", "write -P 0x5b 6M 64k", "flush")
    _call(net, "business-1", "volume.freeze", target)
    try:
        result = _transfer(net, "durable", since=0)
    finally:
        _call(net, "business-1", "volume.release", target)
    ids = {cid for idx, cid in result["chunk_map"] if cid is not None and idx in (64, 96)}
    assert len(ids) == 2 and result["new_chunks"] >= 2
    assert [_committed_copies(net, cid) for cid in sorted(ids)] == [2, 2]


def test_a_put_with_a_sync_flag_that_is_not_a_boolean_is_refused(net: Deployment) -> None:
    item = [bytes(32), b"blob"]
    with pytest.raises(RemoteError, match="sync must be true or false"):
        _call(net, "backup-1", "chunk.put_many", {"items": [item], "sync": "later"})
    assert _call(net, "backup-1", "chunk.has_many", {"ids": [bytes(32)]})["present"] == [False]


def _backup_ids(net: Deployment) -> list[bytes]:
    ids: set[bytes] = set()
    for node in ("backup-1", "backup-2", "backup-3"):
        ids.update(_call(net, node, "chunk.list", {"after": b"", "limit": 65536})["ids"])
    return sorted(ids)


def _kill(net: Deployment, node: str) -> None:
    kill_node(net.root, node, forget=True)


def test_a_lost_backup_node_loses_nothing_and_repair_restores_r_copies(net: Deployment) -> None:
    ids = _backup_ids(net)
    assert ids, "the transfer test stored chunks"
    _kill(net, "backup-2")
    assert set(_cluster_get(net, ids)) == set(ids)
    folder = net.root / "data" / "nodes" / "backup-2"
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    net.ok("up")
    before = net.json("status")
    health = next(r for r in before if r["name"] == "backup-1")["detail"]["replica_health"]
    assert health["below_replicas"] > 0
    report = net.json("backup", "repair")
    assert report["copies_made"] == health["below_replicas"]
    after = next(r for r in net.json("status") if r["name"] == "backup-1")
    assert after["detail"]["replica_health"]["below_replicas"] == 0


def test_scrub_finds_a_flipped_byte_and_repairs_it(net: Deployment) -> None:
    packs = sorted((net.root / "data" / "nodes" / "backup-1").rglob("*.pack"))
    assert packs
    pack = packs[0]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    summary = net.json("backup", "scrub")
    assert summary["damaged"]["backup-1"] == 1
    assert summary["repair"]["copies_made"] >= 1
    assert set(_cluster_get(net, _backup_ids(net))) == set(_backup_ids(net))
    second = net.json("backup", "scrub")
    assert sum(second["damaged"].values()) == 0


def test_flushed_writes_survive_kill_9_of_the_business_node(net: Deployment) -> None:
    url = _url(net)
    qemu_io(url, "write -P 0x6b 2M 512k", "flush")
    _kill(net, "business-1")
    net.ok("up")
    qemu_io(_url(net), "read -P 0x6b 2M 512k")

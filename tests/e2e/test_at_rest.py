"""Encryption at rest on a real local network: nothing a VM wrote is readable on backup nodes.

The VM (qemu-io through NBD) writes chunks of random bytes with a distinctive text in
them: random bytes do not compress, so without encryption the text lies in the packs as
written (the last test shows it does), and a plain search is a sound check.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.data_key import fingerprint, generate, read_key, write_key
from tests.cli.conftest import Deployment, make_deployment, running
from tests.e2e.processes import kill_node
from tests.e2e.qemu import qemu_io

pytestmark = pytest.mark.slow
KiB, MiB = 1 << 10, 1 << 20
SIZE = 16 * MiB
PATTERN = b"vmsnap at-rest canary: this text must never be stored in clear"
MIRROR_PATTERN = b"vmsnap at-rest canary written through a fast-rollback mirror"
PASSPHRASE = "recovery passphrase of the at-rest tests"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running(tmp_path_factory.mktemp("atrest") / "deployment") as deployment:
        yield deployment


def canary_chunk(text: bytes, seed: int) -> bytes:
    """64 KiB of random bytes with `text` at three places."""
    data = bytearray(random.Random(seed).randbytes(64 * KiB))
    for at in (0, 20_000, 64 * KiB - len(text)):
        data[at : at + len(text)] = text
    return bytes(data)


def write_canary(url: str, tmp_path: Path, text: bytes, seed: int, offsets: list[int]) -> bytes:
    """Write a canary chunk at each offset through NBD; return the chunk."""
    chunk = canary_chunk(text, seed)
    source = tmp_path / f"canary-{seed}.bin"
    source.write_bytes(chunk)
    qemu_io(url, *(f"write -s {source} {offset} 64k" for offset in offsets), "flush")
    return chunk


def files_holding(folder: Path, needle: bytes) -> list[Path]:
    """Every file under `folder` whose bytes contain `needle`."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def backup_folders(net: Deployment) -> list[Path]:
    found = sorted((net.root / "data" / "nodes").glob("backup-*"))
    assert len(found) == 3
    return found


def register(net: Deployment, vm: str) -> str:
    net.ok("vm", "register", vm, "--ip", "10.0.0.71", "--disk", f"system:root:{SIZE // MiB}M")
    return str(net.ok("disk", "url", vm, "root").stdout.strip())


def export(net: Deployment, target: Path, *args: str) -> bytes:
    net.ok("disk", "export", "canary-01", "root", str(target), "--force", *args)
    return target.read_bytes()


def test_a_snapshot_leaves_no_plaintext_on_backup_nodes_and_round_trips(
    net: Deployment, tmp_path: Path
) -> None:
    url = register(net, "canary-01")
    offsets = [0, 3 * MiB, 9 * MiB + 4 * KiB]
    chunk = write_canary(url, tmp_path, PATTERN, 1, offsets)
    expected = bytearray(SIZE)
    for offset in offsets:
        expected[offset : offset + len(chunk)] = chunk
    snap = net.json("snapshot", "create", "canary-01")
    assert snap["status"] == "committed"

    business = net.root / "data" / "nodes" / "business-1"
    assert files_holding(business, PATTERN), "the search finds the text where it is in clear"
    folders = backup_folders(net)
    # Each chunk lands on two of the three nodes: which two depends on its id, which is
    # keyed by the deployment's random data key, so one node may hold none of them.
    assert sum(1 for f in folders if list(f.rglob("*.pack"))) >= 2, "backup nodes store chunks"
    for folder in folders:
        assert files_holding(folder, PATTERN) == []
    assert files_holding(net.root / "data" / "nodes" / "transfer-1", PATTERN) == []

    assert net.json("snapshot", "verify", snap["id"])["ok"] is True
    assert export(net, tmp_path / "snap.raw", "--snapshot", snap["id"]) == bytes(expected)
    assert export(net, tmp_path / "live.raw") == bytes(expected)


def test_writes_through_a_fast_rollback_mirror_leave_no_plaintext_on_backup_nodes(
    net: Deployment, tmp_path: Path
) -> None:
    url = str(net.ok("disk", "url", "canary-01", "root").stdout.strip())
    (snap,) = net.json("snapshot", "list", "canary-01")
    at_snapshot = export(net, tmp_path / "at.raw")
    # Without a transfer node the restore waits, so the VM's writes go to the mirror.
    kill_node(net.root, "transfer-1", forget=True)
    net.json("rollback", "start", "canary-01", snap["id"], "--fast")
    chunk = write_canary(url, tmp_path, MIRROR_PATTERN, 2, [5 * MiB])
    journals = [p for f in backup_folders(net) for p in f.glob("mirrors/*/journal.log")]
    assert len(journals) == 2 and all(j.stat().st_size for j in journals)
    for folder in backup_folders(net):
        assert files_holding(folder, MIRROR_PATTERN) == []
        assert files_holding(folder, PATTERN) == []

    net.ok("up")
    assert net.json("rollback", "finish", "canary-01")["changed_chunks"] == 1
    expected = bytearray(at_snapshot)
    expected[5 * MiB : 5 * MiB + len(chunk)] = chunk
    assert export(net, tmp_path / "after.raw") == bytes(expected)
    assert net.json("rollback", "diff", "canary-01")["ok"] is True
    for folder in backup_folders(net):
        assert files_holding(folder, MIRROR_PATTERN) == []


def test_garbage_collection_scrub_and_repair_work_on_encrypted_chunks(net: Deployment) -> None:
    scrub = net.json("backup", "scrub")
    assert sum(scrub["checked"].values()) > 0
    assert set(scrub["damaged"].values()) == {0}
    net.json("backup", "gc")
    kill_node(net.root, "backup-3", forget=True)
    folder = net.root / "data" / "nodes" / "backup-3"
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    net.ok("up")
    assert net.json("backup", "repair")["copies_made"] > 0
    assert files_holding(folder, PATTERN) == []
    for snap in net.json("snapshot", "list"):
        assert net.json("snapshot", "verify", snap["id"])["ok"] is True


def test_key_import_is_refused_while_the_network_runs(net: Deployment, tmp_path: Path) -> None:
    other = make_deployment(tmp_path / "other")
    exported = tmp_path / "other.json"
    other.ok("key", "export", str(exported), "--plain")
    before = (net.root / "data.key").read_bytes()
    result = net.run("key", "import", str(exported))
    assert result.exit_code == 5
    assert result.output.startswith("error: nodes are running (")
    assert result.output.endswith("stop them with vmsnap down\n")
    assert (net.root / "data.key").read_bytes() == before


def test_a_lost_data_key_is_recovered_from_its_export(net: Deployment, tmp_path: Path) -> None:
    passphrase = tmp_path / "passphrase.txt"
    passphrase.write_text(PASSPHRASE + "\n")
    exported = tmp_path / "key.json"
    net.ok("key", "export", str(exported), "--passphrase-file", str(passphrase))
    key = read_key(net.root / "data.key")
    assert key is not None
    shown = net.json("key", "show")
    assert set(shown["written_with"].values()) == {fingerprint(key)}

    net.ok("down")
    write_key(net.root / "data.key", generate(), replace=True)
    refused = net.run("up")
    assert refused.exit_code != 0
    assert f"holds data written with data key {fingerprint(key)}" in refused.output
    assert "Traceback" not in refused.output

    net.ok("key", "import", str(exported), "--passphrase-file", str(passphrase))
    assert read_key(net.root / "data.key") == key
    net.ok("up")
    for snap in net.json("snapshot", "list"):
        assert net.json("snapshot", "verify", snap["id"])["ok"] is True


def test_without_encryption_the_canary_is_readable_on_backup_nodes(tmp_path: Path) -> None:
    with running(tmp_path / "plain", "--no-encryption") as plain:
        url = register(plain, "canary-01")
        write_canary(url, tmp_path, PATTERN, 1, [0])
        plain.json("snapshot", "create", "canary-01")
        holding = [f for f in backup_folders(plain) if files_holding(f, PATTERN)]
        assert len(holding) == 2, "R = 2 copies, stored in clear"

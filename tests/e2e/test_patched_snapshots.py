"""Incremental snapshots of a few 4 KiB blocks: patched chunks end to end, qemu-io as the VM."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodes.chunks import ChunkCodec
from nodes.config import load_config
from nodes.manifest import Manifest
from nodes.manifest_store import load_manifest
from nodes.patches import MAX_LAYERS
from nodes.peers import Peers, node_names
from nodes.replication import BackupCluster
from tests.cli.conftest import Deployment, running
from tests.e2e.processes import alter_stored_copies, kill_node
from tests.e2e.qemu import qemu_io

pytestmark = pytest.mark.slow
KiB, MiB = 1 << 10, 1 << 20
CHUNK, BLOCK = 64 * KiB, 4 * KiB
SIZE = 16 * MiB


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running(tmp_path_factory.mktemp("patched") / "deployment") as deployment:
        yield deployment


def _export(net: Deployment, target: Path, snapshot: str | None = None, vm: str = "pt-01") -> bytes:
    args = ["disk", "export", vm, "root", str(target), "--force"]
    net.ok(*([*args, "--snapshot", snapshot] if snapshot else args))
    return target.read_bytes()


def _new_vm(
    net: Deployment, vm: str, ip: str, rng: random.Random, tmp_path: Path
) -> tuple[bytearray, str, dict[str, Any]]:
    """A VM whose disk holds 4 MiB of random bytes, then holes: its image, NBD URL and full
    snapshot."""
    image = bytearray(SIZE)
    image[: 4 * MiB] = rng.randbytes(4 * MiB)
    source = tmp_path / "image.raw"
    source.write_bytes(bytes(image))
    net.ok("vm", "register", vm, "--ip", ip, "--disk", f"system:root:{SIZE // MiB}M")
    net.ok("disk", "import", vm, "root", str(source))
    url = str(net.ok("disk", "url", vm, "root").stdout.strip())
    return image, url, net.json("snapshot", "create", vm)


def _write(url: str, image: bytearray, rng: random.Random, *spans: tuple[int, int]) -> None:
    """Write a random pattern through NBD at each (offset, length), and into `image` alike."""
    commands = []
    for offset, length in spans:
        pattern = rng.randrange(1, 256)
        image[offset : offset + length] = bytes([pattern]) * length
        commands.append(f"write -P {pattern} {offset} {length}")
    qemu_io(url, *commands, "flush")


def _manifest(net: Deployment, snapshot: dict[str, Any]) -> Manifest:
    """A snapshot's manifest, fetched from the backup cluster."""
    config = load_config(net.config, {})
    (disk,) = snapshot["disk_details"]

    async def load() -> Manifest:
        peers = Peers(config, "test")
        try:
            cluster = BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)
            codec = ChunkCodec(config.data_key(), config.storage.compression_level)
            return await load_manifest(cluster, codec, bytes.fromhex(disk["manifest"]))
        finally:
            await peers.close()

    return asyncio.run(load())


def _masks(net: Deployment, snapshot: dict[str, Any]) -> dict[int, int]:
    """Every patched entry's blocks, over all its layers."""
    return {i: p.covered for i, p in _manifest(net, snapshot).patches.items()}


def test_a_few_written_blocks_are_read_and_stored_as_patches_and_read_back_whole(
    net: Deployment, tmp_path: Path
) -> None:
    rng = random.Random(7)
    image, url, full = _new_vm(net, "pt-01", "10.0.0.71", rng, tmp_path)

    _write(
        url,
        image,
        rng,
        (3 * BLOCK, BLOCK),  # chunk 0: one block
        (5 * CHUNK + 2 * BLOCK, 2 * BLOCK),  # chunk 5: two blocks
        (6 * CHUNK, 9 * BLOCK),  # chunk 6: more than half of it, read whole
        (200 * CHUNK + 15 * BLOCK, BLOCK),  # chunk 200: a hole in the parent
    )
    second = net.json("snapshot", "create", "pt-01")
    (disk,) = second["disk_details"]
    assert disk["incremental"] is True
    assert disk["changed_chunks"] == 4
    assert disk["bytes_read"] == 4 * BLOCK + CHUNK
    assert _masks(net, second) == {0: 1 << 3, 5: 0b1100, 200: 1 << 15}
    assert _manifest(net, second).patches[200].base is None, "a hole in the parent: no base"
    at_second = bytes(image)
    assert _export(net, tmp_path / "second.raw", second["id"]) == at_second

    _write(url, image, rng, (7 * BLOCK, BLOCK))  # chunk 0 again: a layer over its patch
    third = net.json("snapshot", "create", "pt-01")
    (disk,) = third["disk_details"]
    assert (disk["changed_chunks"], disk["bytes_read"]) == (1, BLOCK)
    assert _masks(net, third) == {0: (1 << 3) | (1 << 7), 5: 0b1100, 200: 1 << 15}
    assert [mask for _delta, mask in _manifest(net, third).patches[0].layers] == [1 << 3, 1 << 7]
    at_third = bytes(image)
    assert _export(net, tmp_path / "third.raw", third["id"]) == at_third

    for snap in (full, second, third):
        assert net.json("snapshot", "verify", snap["id"])["ok"] is True

    net.json("rollback", "start", "pt-01", second["id"])
    assert _export(net, tmp_path / "live.raw") == at_second

    # Fast rollback with no transfer node: reads come from the mirror's patched entries.
    kill_node(net.root, "transfer-1", forget=True)
    net.json("rollback", "start", "pt-01", third["id"], "--fast")
    qemu_io(url, f"read -P {at_third[3 * BLOCK]} {3 * BLOCK} 4k")
    qemu_io(url, f"read -P {at_third[7 * BLOCK]} {7 * BLOCK} 4k")
    qemu_io(url, f"read -P {at_third[200 * CHUNK + 15 * BLOCK]} {200 * CHUNK + 15 * BLOCK} 4k")
    net.ok("up")
    net.json("rollback", "finish", "pt-01")
    assert _export(net, tmp_path / "after.raw") == at_third
    net.json("backup", "gc")
    for snap in (full, second, third):
        assert net.json("snapshot", "verify", snap["id"])["ok"] is True


def test_each_incremental_stores_only_blocks_written_since_until_the_layers_are_folded(
    net: Deployment, tmp_path: Path
) -> None:
    """Chunk 9 rewritten one block per snapshot: each snapshot reads that block alone, as
    one more layer, until the patch has `MAX_LAYERS`; the next reads every block it covers
    again, as one layer. Every snapshot exports as the disk was and verifies."""
    rng = random.Random(11)
    url = str(net.ok("disk", "url", "pt-01", "root").stdout.strip())
    image = bytearray(_export(net, tmp_path / "now.raw"))
    net.json("snapshot", "create", "pt-01")  # whatever the rollbacks left, taken whole
    taken = []
    for n in range(MAX_LAYERS + 1):
        _write(url, image, rng, (9 * CHUNK + n * BLOCK, BLOCK))
        snap = net.json("snapshot", "create", "pt-01")
        (disk,) = snap["disk_details"]
        patch = _manifest(net, snap).patches[9]
        if n < MAX_LAYERS:
            assert (disk["changed_chunks"], disk["bytes_read"]) == (1, BLOCK)
            assert [mask for _delta, mask in patch.layers] == [1 << b for b in range(n + 1)]
        else:
            assert (disk["changed_chunks"], disk["bytes_read"]) == (1, (n + 1) * BLOCK)
            assert [mask for _delta, mask in patch.layers] == [(1 << (n + 1)) - 1]
        taken.append((snap, bytes(image)))
    for snap, expected in taken:
        assert _export(net, tmp_path / "at.raw", snap["id"]) == expected
        assert net.json("snapshot", "verify", snap["id"])["ok"] is True


def test_verify_fails_loudly_when_every_copy_of_a_lower_layer_is_altered(net: Deployment) -> None:
    """The snapshot whose chunk 9 has `MAX_LAYERS` layers: its oldest delta is altered."""
    snap = net.json("snapshot", "show", net.json("snapshot", "list", "pt-01")[-2]["id"])
    layers = _manifest(net, snap).patches[9].layers
    assert len(layers) == MAX_LAYERS
    assert alter_stored_copies(net.root, layers[0][0]) == 2
    result = net.run("snapshot", "verify", snap["id"])
    assert result.exit_code == 6
    assert "failed verification" in result.output


def test_after_the_newest_snapshot_is_deleted_the_next_reads_only_what_changed_since_its_parent(
    net: Deployment, tmp_path: Path
) -> None:
    """Deleting the newest snapshot leaves the volume's base on a deleted view: the next
    snapshot is still incremental on the one before, and reads the blocks written since
    it, not the whole disk."""
    rng = random.Random(13)
    image, url, full = _new_vm(net, "pt-02", "10.0.0.72", rng, tmp_path)

    _write(url, image, rng, (1 * CHUNK, BLOCK), (2 * CHUNK + 3 * BLOCK, BLOCK))
    dropped = net.json("snapshot", "create", "pt-02")
    _write(url, image, rng, (3 * CHUNK + 5 * BLOCK, BLOCK))
    net.json("snapshot", "delete", dropped["id"])

    after = net.json("snapshot", "create", "pt-02")
    (disk,) = after["disk_details"]
    assert after["parent"] == full["id"]
    assert disk["incremental"] is True
    assert (disk["changed_chunks"], disk["bytes_read"]) == (3, 3 * BLOCK)
    assert _masks(net, after) == {1: 1, 2: 1 << 3, 3: 1 << 5}
    assert _export(net, tmp_path / "after.raw", after["id"], "pt-02") == bytes(image)
    assert net.json("snapshot", "verify", after["id"])["ok"] is True

    _write(url, image, rng, (4 * CHUNK, BLOCK))
    (disk,) = net.json("snapshot", "create", "pt-02")["disk_details"]
    assert (disk["changed_chunks"], disk["bytes_read"]) == (1, BLOCK), "the new base: patches"

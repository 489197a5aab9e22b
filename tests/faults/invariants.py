"""The invariants checked after every fault, each check counted in the run's tally.

1. every committed snapshot verifies against its root on chain (``snapshot verify --all``);
2. every write qemu-io was told is done is on the disk the VM sees through NBD (the business
   volume, or the mirror and its journal during a fast rollback): a model of each disk holds
   what was acknowledged, and the disk is read back whole with qemu-img;
3. every chunk a live manifest references is held by R backup nodes;
4. the projection equals a replay of the chain, and 5. the ledger's hash chain verifies
   against the contract's head (``ledger verify``);
6. no frozen view outlives its snapshot: a business volume holds no view while no snapshot
   is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.chunks import ChunkCodec
from nodes.client import call_sync
from nodes.config import load_config
from nodes.gc import mark
from nodes.peers import Peers, node_names
from nodes.replication import BackupCluster
from tests.cli.conftest import Deployment
from tests.e2e.processes import runfile
from tests.e2e.qemu import qemu_img, qemu_io
from tests.faults.network import wait_for
from tests.faults.tally import Tally

VIEW_GRACE = 10.0


@dataclass
class DiskModel:
    """What a VM's disk must hold: every acknowledged write, and each snapshot's image."""

    vm: str
    size: int
    data: bytearray = field(init=False)
    images: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = bytearray(self.size)

    def write(self, net: Deployment, offset: int, length: int, pattern: int) -> None:
        """Write `pattern` through NBD with qemu-io and flush; on success the model holds it."""
        qemu_io(url(net, self.vm), f"write -P {pattern} {offset} {length}", "flush")
        self.data[offset : offset + length] = bytes([pattern]) * length

    def snapshot_taken(self, snapshot: str) -> None:
        """A snapshot of the disk as it is now was committed."""
        self.images[snapshot] = bytes(self.data)

    def rolled_back(self, snapshot: str) -> None:
        """The disk was rolled back to `snapshot`."""
        self.data = bytearray(self.images[snapshot])


def url(net: Deployment, vm: str) -> str:
    """The NBD URL the VM's root disk is served at now."""
    return str(net.ok("disk", "url", vm, "root").stdout.strip())


class Invariants:
    """Checks the whole deployment; every passed check is counted in `tally`."""

    def __init__(self, net: Deployment, tally: Tally, scratch: Path) -> None:
        self.net = net
        self.tally = tally
        self.scratch = scratch
        self.config = load_config(net.config, {})

    def check(self, models: Iterable[DiskModel]) -> None:
        """Every invariant, in order."""
        self.snapshots_verify()
        self.acknowledged_writes(models)
        self.chunks_replicated()
        self.ledger_consistent()
        self.no_stale_views()

    def snapshots_verify(self) -> None:
        """Every committed snapshot against its root on chain, down to every chunk."""
        reports = self.net.json("snapshot", "verify", "--all")
        for report in reports:
            assert report["ok"], report
            self.tally.bytes_verified += int(report["bytes_checked"])
        if reports:
            self.tally.checked(
                "committed snapshot verifies against its on-chain root", len(reports)
            )

    def acknowledged_writes(self, models: Iterable[DiskModel]) -> None:
        """Each modelled disk, read whole through NBD, equals its model."""
        for model in models:
            target = self.scratch / f"{model.vm}.raw"
            qemu_img("convert", "-f", "raw", "-O", "raw", url(self.net, model.vm), str(target))
            seen = target.read_bytes()
            target.unlink()
            assert len(seen) == model.size
            if seen != bytes(model.data):
                first = next(i for i in range(model.size) if seen[i] != model.data[i])
                raise AssertionError(f"{model.vm}: byte {first} differs from what was acknowledged")
            self.tally.bytes_verified += model.size
            self.tally.checked("acknowledged writes are on the disk the VM sees")

    def chunks_replicated(self) -> None:
        """Every chunk a live manifest references (and the manifests) is on R backup nodes."""
        live = [s for s in self.net.json("snapshot", "list") if s["status"] == "committed"]
        missing, referenced = asyncio.run(self._under_replicated(live))
        assert not missing, f"{len(missing)} referenced chunks have fewer than R copies"
        self.tally.checked("referenced chunk held by R backup nodes", referenced)

    async def _under_replicated(self, live: list[dict[str, Any]]) -> tuple[list[bytes], int]:
        config = self.config
        peers = Peers(config, "fault-suite")
        try:
            cluster = BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)
            codec = ChunkCodec(config.data_key(), config.storage.compression_level)
            referenced = await mark(cluster, codec, live)
            held, unreachable = await cluster.holders()
        finally:
            await peers.close()
        assert not unreachable, unreachable
        replicas = config.topology.replicas
        return [c for c in referenced if len(held.get(c, ())) < replicas], len(referenced)

    def ledger_consistent(self) -> None:
        """The projection equals a replay; the events' hash chain ends at the contract's head."""
        report = self.net.json("ledger", "verify")
        assert report["projection_matches"] is True, report["problems"]
        self.tally.checked("projection equals a replay of the chain")
        assert report["ok"] is True and report["head"] == report["contract_head"], report
        self.tally.checked("ledger hash chain verifies against the contract head")

    def no_stale_views(self) -> None:
        """No business volume keeps a frozen view once no snapshot is in flight.

        A restarted business node releases views of finished snapshots in the background,
        so the check allows it `VIEW_GRACE` seconds.
        """
        left: list[str] = []

        def released() -> bool:
            left[:] = self._views()
            return not left

        with contextlib.suppress(AssertionError):
            wait_for("stale views to go", released, VIEW_GRACE)
        assert not left, f"frozen views outlive their snapshots: {left}"
        self.tally.checked("no frozen view outlives its snapshot")

    def _views(self) -> list[str]:
        views = []
        for node in node_names(self.config, "business"):
            run = runfile(self.net.root, node)
            reply = call_sync(
                run["host"], run["port"], self.config.secret(), "volume.list", peer=node
            )
            views += [f"{v['vm']}: {view}" for v in reply["volumes"] for view in v["views"]]
        return views

"""Backup-cluster maintenance run from the operator's side: scrub, repair, health."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from nodes.config import Config
from nodes.errors import NodeError
from nodes.peers import Peers, node_names
from nodes.replication import BackupCluster, RepairReport

Progress = Callable[[int, int], None]


@dataclass
class ScrubSummary:
    """A cluster-wide scrub: what each node found, then the repair that followed."""

    checked: dict[str, int] = field(default_factory=dict)
    damaged: dict[str, int] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)
    repair: RepairReport = field(default_factory=RepairReport)

    def plain(self) -> dict[str, Any]:
        """As plain data for JSON."""
        return asdict(self)


def _cluster(config: Config, peers: Peers) -> BackupCluster:
    return BackupCluster(peers, node_names(config, "backup"), config.topology.replicas)


async def repair(config: Config, progress: Progress | None = None) -> RepairReport:
    """Bring every chunk back to R copies."""
    peers = Peers(config, "cli")
    try:
        return await _cluster(config, peers).repair(progress)
    finally:
        await peers.close()


async def scrub(config: Config, progress: Progress | None = None) -> ScrubSummary:
    """Re-hash every copy on every node, quarantine bad ones, repair them from good replicas."""
    peers = Peers(config, "cli")
    summary = ScrubSummary()
    try:
        nodes = node_names(config, "backup")
        for done, node in enumerate(nodes, start=1):
            try:
                report = await peers.call(node, "store.scrub", timeout=3600)
            except NodeError:
                summary.unreachable.append(node)
                continue
            summary.checked[node] = int(report.get("checked", 0))
            summary.damaged[node] = len(report.get("corrupted", []))
            if progress is not None:
                progress(done, len(nodes))
        summary.repair = await _cluster(config, peers).repair()
    finally:
        await peers.close()
    return summary


async def health(config: Config) -> dict[str, Any]:
    """How many chunks the cluster holds and how many have fewer than R copies."""
    peers = Peers(config, "cli")
    try:
        cluster = _cluster(config, peers)
        held, unreachable = await cluster.holders()
    finally:
        await peers.close()
    below = sum(1 for nodes in held.values() if len(nodes) < config.topology.replicas)
    return {
        "chunks": len(held),
        "below_replicas": below,
        "replicas": config.topology.replicas,
        "unreachable": unreachable,
    }

"""Reading mirror journals back, checking them against the tags on chain, and auditing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ledger import events
from ledger.errors import InputError, NotFound, VmsnapError
from ledger.service import Ledger
from nodes.journal import Record, difference, difference_root, verify
from nodes.manifest import snapshot_root
from nodes.mirror_service import mirror_nodes
from nodes.peers import Peers
from nodes.replication import BackupCluster

Runner = Callable[..., Awaitable[Any]]


class JournalMismatch(VmsnapError):
    """A mirror's journal does not match the tags on chain."""

    exit_code = 6

    def __init__(self, mirror: str, problem: str) -> None:
        super().__init__(f"journal of mirror {mirror[:12]}: {problem}")


class Journals:
    """Fetch a mirror's journal from any backup node holding a copy; replay and check it."""

    def __init__(
        self, ledger: Ledger, peers: Peers, cluster: BackupCluster, on_ledger: Runner
    ) -> None:
        self.ledger = ledger
        self.peers = peers
        self.cluster = cluster
        self._on_ledger = on_ledger

    async def difference(
        self, start: events.MirrorTag, end: events.MirrorTag
    ) -> tuple[dict[int, bytes | None], list[Record]]:
        """The journal between two tags replayed; the chain and both tags checked."""
        records = await self.journal(start, end.position)
        head = verify(start.mirror, records[: end.position])
        if len(records) < end.position or head.hex() != end.head:
            raise JournalMismatch(start.mirror, "the end tag does not match the journal")
        start_head = verify(start.mirror, records[: start.position])
        if start_head.hex() != start.head:
            raise JournalMismatch(start.mirror, "the start tag does not match the journal")
        return difference(records, start.position, end.position), records

    async def journal(self, tag: events.MirrorTag, upto: int) -> list[Record]:
        """The journal's first `upto` records, from any backup node that holds a copy."""
        holders = mirror_nodes(tag.mirror, self.cluster.nodes, self.cluster.replicas)
        last: VmsnapError | None = None
        for node in holders:
            try:
                records = await self._journal_from(node, tag.mirror, upto)
            except VmsnapError as err:
                last = err
            else:
                return records
        raise last or JournalMismatch(tag.mirror, "no backup node holds the journal")

    async def _journal_from(self, node: str, mirror: str, upto: int) -> list[Record]:
        records: list[Record] = []
        while len(records) < upto:
            page = await self.peers.call(
                node, "mirror.journal", {"mirror": mirror, "after": len(records)}
            )
            if not page["records"]:
                break
            records.extend(Record.unpack(r) for r in page["records"])
        return records

    async def audit(self, ref: str) -> dict[str, Any]:
        """Recompute a finished (or ending) fast rollback's difference; compare with the chain."""
        rows = await self._on_ledger(self.ledger.projection.rollbacks, None)
        found = [r for r in rows if r["id"].startswith(ref)] if len(ref) >= 4 else []
        if not found:
            found = [r for r in rows if r["vm"] == ref and r["mode"] == "fast"][-1:]
        if len(found) != 1:
            raise NotFound(f"no single fast rollback matches {ref!r}: see vmsnap rollback list")
        row = found[0]
        if row["mode"] != "fast" or not row["end_tags"]:
            raise InputError(f"rollback {row['id'][:12]} has no end tag yet (finish it first)")
        roots = {}
        changed = 0
        problems = []
        for start_plain, end_plain in zip(row["start_tags"], row["end_tags"], strict=True):
            start, end = events.MirrorTag(**start_plain), events.MirrorTag(**end_plain)
            try:
                changes, _records = await self.difference(start, end)
            except VmsnapError as err:
                problems.append(f"{start.resource_id}: {err}")
                continue
            roots[start.resource_id] = difference_root(changes)
            changed += len(changes)
        recomputed = snapshot_root(roots).hex() if not problems else None
        if recomputed is not None and recomputed != row["difference_root"]:
            problems.append("the recomputed difference root differs from the root on chain")
        return {
            "rollback": row["id"],
            "vm": row["vm"],
            "ok": not problems,
            "changed_chunks": changed,
            "recorded_root": row["difference_root"],
            "recomputed_root": recomputed,
            "problems": problems,
        }

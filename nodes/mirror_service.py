"""The backup node's mirror requests: create, read, write, tag, close; journal copies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ledger.errors import InputError
from nodes.chunks import ChunkCodec
from nodes.journal import RECORD, Journal, JournalBroken, Record
from nodes.manifest_store import load_manifest
from nodes.mirror import LocalGet, Mirror, MirrorError, MirrorMeta
from nodes.peers import Peers
from nodes.replication import BackupCluster, placement
from nodes.request_args import blob, integer, text
from nodes.server import Handler

log = logging.getLogger("vmsnap.mirrors")
MAX_READ = 32 << 20
JOURNAL_PAGE = 4096


def mirror_nodes(mirror: str, nodes: list[str], replicas: int) -> list[str]:
    """The backup nodes of a mirror: the first holds it, all hold its journal."""
    return placement(bytes.fromhex(mirror), nodes, replicas)


class MirrorService:
    """Mirrors held by this backup node, and journal copies of mirrors held elsewhere."""

    def __init__(
        self,
        root: Path,
        name: str,
        peers: Peers,
        cluster: BackupCluster,
        codec: ChunkCodec,
        local: LocalGet | None = None,
    ) -> None:
        self.root = root
        self.local = local
        self.name = name
        self.peers = peers
        self.cluster = cluster
        self.codec = codec
        self.mirrors: dict[str, Mirror] = {}
        self._copies: dict[str, Journal] = {}
        root.mkdir(parents=True, exist_ok=True)
        for meta in sorted(root.glob("*/meta.json")):
            try:
                mirror = Mirror.open(meta.parent, cluster, codec, local)
            except JournalBroken as err:
                log.warning("mirror %s not served: %s", meta.parent.name[:12], err)
                continue
            self.mirrors[mirror.meta.mirror] = mirror

    def handlers(self) -> dict[str, Handler]:
        """The operations, by name."""
        return {
            "mirror.create": self.create,
            "mirror.read": self.read,
            "mirror.write": self.write,
            "mirror.zero": self.zero,
            "mirror.tag": self.tag,
            "mirror.journal": self.journal,
            "mirror.close": self.close_mirror,
            "mirror.references": self.references,
            "journal.copy": self.copy,
        }

    def close(self) -> None:
        """Close every journal file."""
        for mirror in self.mirrors.values():
            mirror.journal.close()
        for journal in self._copies.values():
            journal.close()

    def _mirror(self, args: dict[str, Any]) -> Mirror:
        ident = _mirror_id(args)
        mirror = self.mirrors.get(ident)
        if mirror is None:
            raise MirrorError(f"no mirror {ident[:12]} on {self.name}")
        return mirror

    async def create(self, args: dict[str, Any]) -> dict[str, Any]:
        """Make a mirror of a snapshot's disk from its manifest (metadata only)."""
        ident = _mirror_id(args)
        existing = self.mirrors.get(ident)
        if existing is not None:
            return existing.tag()
        manifest_id = bytes.fromhex(text(args, "manifest"))
        manifest = await load_manifest(self.cluster, self.codec, manifest_id)
        meta = MirrorMeta(
            ident,
            text(args, "vm"),
            text(args, "resource_id"),
            manifest.size,
            manifest.chunk_size,
            manifest_id.hex(),
        )
        mirror = await asyncio.to_thread(
            Mirror.create,
            self.root / ident,
            meta,
            dict(manifest.entries),
            self.cluster,
            self.codec,
            self.local,
            manifest.patches,
        )
        self.mirrors[ident] = mirror
        return mirror.tag()

    async def read(self, args: dict[str, Any]) -> dict[str, Any]:
        """Bytes of a mirror."""
        offset, length = integer(args, "offset"), integer(args, "length")
        if length > MAX_READ:
            raise InputError(f"read at most {MAX_READ} bytes at a time")
        return {"data": await self._mirror(args).read(offset, length)}

    async def write(self, args: dict[str, Any]) -> dict[str, Any]:
        """Write to a mirror: stored, journaled, copied; answered once durable."""
        mirror = self._mirror(args)
        data = blob(args, "data")
        await mirror.write(integer(args, "offset"), len(data), data, self._replicator(mirror))
        return mirror.tag()

    async def zero(self, args: dict[str, Any]) -> dict[str, Any]:
        """Zero a range of a mirror (whole chunks become holes)."""
        mirror = self._mirror(args)
        offset, length = integer(args, "offset"), integer(args, "length")
        await mirror.write(offset, length, None, self._replicator(mirror))
        return mirror.tag()

    def _replicator(self, mirror: Mirror) -> Callable[[list[Record]], Awaitable[None]]:
        others = [
            n
            for n in mirror_nodes(mirror.meta.mirror, self.cluster.nodes, self.cluster.replicas)
            if n != self.name
        ]

        async def replicate(records: list[Record]) -> None:
            packed = [r.pack() for r in records]
            await asyncio.gather(
                *(
                    self.peers.call(
                        n, "journal.copy", {"mirror": mirror.meta.mirror, "records": packed}
                    )
                    for n in others
                )
            )

        return replicate

    async def tag(self, args: dict[str, Any]) -> dict[str, Any]:
        """The journal's position and head now (the controller puts it on chain)."""
        return self._mirror(args).tag()

    async def journal(self, args: dict[str, Any]) -> dict[str, Any]:
        """Records after `after` (at most a page), from the mirror or a journal copy."""
        ident = _mirror_id(args)
        after = integer(args, "after", 0)
        mirror = self.mirrors.get(ident)
        journal = mirror.journal if mirror is not None else self._copy(ident, create=False)
        records = journal.records[after : after + JOURNAL_PAGE]
        return {
            "records": [r.pack() for r in records],
            "position": journal.position,
            "head": journal.head,
        }

    async def close_mirror(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop serving a mirror; its journal stays for audits."""
        mirror = self._mirror(args)
        await asyncio.to_thread(mirror.close_mirror)
        return mirror.tag()

    async def references(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every chunk an open mirror shows (garbage collection keeps them)."""
        ids: set[bytes] = set()
        for mirror in self.mirrors.values():
            if mirror.meta.open:
                ids.update(mirror.stored_ids())
                ids.update(c for c in mirror.overlay.values() if c is not None)
        return {"ids": sorted(ids)}

    async def copy(self, args: dict[str, Any]) -> dict[str, Any]:
        """Append records of a mirror held elsewhere to this node's copy of its journal."""
        ident = _mirror_id(args)
        raw = args.get("records")
        if not isinstance(raw, list) or not all(
            isinstance(r, bytes) and len(r) == RECORD.size for r in raw
        ):
            raise InputError(f"records must be a list of {RECORD.size}-byte records")
        journal = self._copy(ident, create=True)
        records = [Record.unpack(r) for r in raw]
        fresh = [r for r in records if r.seq > journal.position]
        await asyncio.to_thread(journal.extend, fresh)
        return {"position": journal.position}

    def _copy(self, ident: str, create: bool) -> Journal:
        journal = self._copies.get(ident)
        if journal is None:
            folder = self.root / ident
            if not create and not (folder / "journal.log").exists():
                raise MirrorError(f"no journal of mirror {ident[:12]} on {self.name}")
            folder.mkdir(parents=True, exist_ok=True)
            journal = Journal(folder / "journal.log", ident)
            self._copies[ident] = journal
        return journal


def _mirror_id(args: dict[str, Any]) -> str:
    ident = text(args, "mirror")
    if len(ident) != 64 or any(c not in "0123456789abcdef" for c in ident):
        raise InputError("a mirror id is 64 hex digits")
    return ident

"""A ledger replica on a business or backup node: the same embedded chain, fed by the sequencer.

The replica applies the blocks the sequencer (the controller) sends, in order, each with the
timestamp and raw transaction the sequencer mined, and answers with its head block hash: a
replica that computes another hash, or whose stored transaction log was altered, reports
itself diverged and applies nothing more.

When a replica starts it catches up from its peers before the sequencer gets to it: it asks
every other replica for its head and reads the blocks it lacks, a page at a time, from the
furthest one that reports no problem, checking each block's hash as it applies it. A
replica that comes back while the sequencer is down is therefore current again as soon as
one peer is, and the sequencer only sends what the peers could not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from eth_account import Account

import contracts
from ledger.audit import audit_records
from ledger.contract import LedgerContract
from ledger.errors import InputError, VmsnapError
from ledger.tester_chain import EmbeddedChain
from ledger.txlog import LoggedBlock
from nodes.config import Config
from nodes.peers import Peers, node_names
from nodes.request_args import integer
from nodes.server import Handler

T = TypeVar("T")
log = logging.getLogger("vmsnap.replica")
PAGE = 256
PEER_TIMEOUT = 10.0
CATCH_UP_TRIES = 30


class LedgerReplica:
    """The copy of the ledger chain a business or backup node keeps."""

    def __init__(self, config: Config, name: str) -> None:
        self.name = name
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica")
        self.chain: EmbeddedChain | None = None
        self.problem: str | None = None
        self.peer_names = [
            n for role in ("business", "backup") for n in node_names(config, role) if n != name
        ]
        self._catching_up: asyncio.Task[int] | None = None
        settings = config.ledger_settings(name)
        self.contract_cache = settings.contract_cache
        self._reader = settings.operator_key
        try:
            self.chain = EmbeddedChain.open(settings.chain)
        except (VmsnapError, OSError, ValueError) as err:
            self.problem = f"cannot open the replica: {err}"
            log.warning("%s", self.problem)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def handlers(self) -> dict[str, Handler]:
        """The operations, by name."""
        return {
            "replica.head": self.head,
            "replica.apply": self.apply,
            "replica.blocks": self.blocks,
            "replica.verify": self.verify,
        }

    def start_catch_up(self, peers: Peers) -> None:
        """Catch up from the peers in the background (see the module's description)."""
        self._catching_up = asyncio.ensure_future(self.catch_up(peers))

    async def catch_up(self, peers: Peers, pause: float = 1.0) -> int:
        """Read the blocks this replica lacks from its furthest sound peer; return how many.

        Peers that are not up yet are asked again, for up to `CATCH_UP_TRIES` rounds, until
        at least one answers.
        """
        applied = 0
        for _round in range(CATCH_UP_TRIES):
            heads = await self._peer_heads(peers)
            if heads:
                for name, number in sorted(heads.items(), key=lambda h: -h[1]):
                    applied += await self._copy_from(peers, name, number)
                return applied
            await asyncio.sleep(pause)
        return applied

    async def _peer_heads(self, peers: Peers) -> dict[str, int]:
        async def ask(name: str) -> tuple[str, dict[str, Any] | None]:
            try:
                return name, await peers.call(name, "replica.head", {}, timeout=PEER_TIMEOUT)
            except VmsnapError:
                return name, None

        answers = await asyncio.gather(*(ask(n) for n in self.peer_names))
        return {
            name: int(answer["number"])
            for name, answer in answers
            if answer is not None and answer.get("problem") is None
        }

    async def _copy_from(self, peers: Peers, name: str, number: int) -> int:
        """Apply `name`'s blocks up to `number` that follow this replica's head."""
        applied = 0
        while self.problem is None:
            mine = (await self.head({}))["number"]
            if mine >= number:
                break
            try:
                page = await peers.call(
                    name, "replica.blocks", {"after": mine}, timeout=PEER_TIMEOUT
                )
                blocks = [_block(item) for item in page.get("blocks", [])]
            except VmsnapError as err:
                log.info("catching up from %s stopped: %s", name, err)
                break
            after = (await self._run(self._apply, blocks))["number"]
            if after <= mine:
                break
            applied += after - mine
        if applied:
            log.info("caught up %d blocks from %s", applied, name)
        return applied

    def close(self) -> None:
        """Close the chain."""
        if self._catching_up is not None:
            self._catching_up.cancel()
        self._worker.shutdown(wait=True)
        if self.chain is not None:
            self.chain.close()

    def _head(self) -> dict[str, Any]:
        if self.chain is None:
            return {"number": -1, "hash": b"", "problem": self.problem}
        head = self.chain.head()
        return {"number": head.number, "hash": head.hash, "problem": self.problem}

    async def head(self, args: dict[str, Any]) -> dict[str, Any]:
        """The replica's head block (and what is wrong with it, if anything)."""
        return await self._run(self._head)

    async def apply(self, args: dict[str, Any]) -> dict[str, Any]:
        """Apply the blocks that follow the head, checking each hash; answer the new head."""
        raw = args.get("blocks")
        if not isinstance(raw, list):
            raise InputError("blocks must be a list of [number, timestamp, raw_tx, hash]")
        blocks = [_block(item) for item in raw]
        return await self._run(self._apply, blocks)

    def _apply(self, blocks: list[LoggedBlock]) -> dict[str, Any]:
        if self.chain is None or self.problem is not None:
            return self._head()
        for block in blocks:
            head = self.chain.head().number
            if block.number <= head:
                continue
            if block.number != head + 1:
                break
            receipt = self.chain.apply(block.raw_tx, block.timestamp)
            mined = self.chain.head().hash
            if mined != block.block_hash:
                self.problem = (
                    f"block {receipt.block_number} has hash 0x{mined.hex()[:16]}…, "
                    f"the sequencer's is 0x{block.block_hash.hex()[:16]}…"
                )
                log.error("replica diverged: %s", self.problem)
                break
        return self._head()

    async def blocks(self, args: dict[str, Any]) -> dict[str, Any]:
        """Logged blocks after `after`, at most a page (for a peer catching up)."""
        after = integer(args, "after", 0)
        if self.chain is None:
            return {"blocks": []}
        chain = self.chain
        found = await self._run(chain.logged, after + 1, after + PAGE)
        return {"blocks": [[b.number, b.timestamp, b.raw_tx, b.block_hash] for b in found]}

    async def verify(self, args: dict[str, Any]) -> dict[str, Any]:
        """Audit this replica alone: its contract's events, hash chain and head."""
        contract = args.get("contract")
        deployed = args.get("deploy_block", 0)
        if not isinstance(contract, bytes) or len(contract) != 20 or not isinstance(deployed, int):
            raise InputError("contract must be a 20-byte address and deploy_block a block number")
        if self.chain is None:
            return {"ok": False, "problems": [self.problem], "head_number": -1, "head_hash": b""}
        chain = self.chain

        def audit() -> dict[str, Any]:
            compiled = contracts.load(cache_dir=self.contract_cache)
            # Read-only calls come from the funded operator account (calls are charged gas).
            reader = Account.from_key(bytes.fromhex(self._reader.removeprefix("0x")))
            view = LedgerContract(chain, compiled, contract, reader)
            records = view.records(deployed)
            report = audit_records(records, view.head(), view.count())
            head = chain.head()
            problems = list(report.problems)
            if self.problem:
                problems.append(self.problem)
            return {
                "ok": not problems,
                "events": report.events,
                "head": report.head,
                "contract_head": report.contract_head,
                "problems": problems,
                "head_number": head.number,
                "head_hash": head.hash,
            }

        return await self._run(audit)


def _block(item: Any) -> LoggedBlock:
    if not (
        isinstance(item, list)
        and len(item) == 4
        and isinstance(item[0], int)
        and isinstance(item[1], int)
        and isinstance(item[2], bytes)
        and isinstance(item[3], bytes)
    ):
        raise InputError("a block is [number, timestamp, raw_tx, hash]")
    return LoggedBlock(item[0], item[1], item[2], item[3])

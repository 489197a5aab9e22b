"""The controller as the ledger's sequencer: every block it mines goes to every replica.

An append is committed when a majority of the replicas (the business and backup nodes)
report the block hash the sequencer mined; until then it is not folded into the projection.
Without a majority the append fails with a clear error and nothing is lost: the block stays
in the sequencer's log and is committed, before anything new, once a majority is back. A
replica that is behind is sent the blocks it lacks; one that reports another hash, or a
problem, is flagged diverged and is not counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ledger.chain import BlockRef, Chain, RawLog, Receipt
from ledger.errors import ChainError, VmsnapError
from ledger.tester_chain import EmbeddedChain
from nodes.peers import Peers

log = logging.getLogger("vmsnap.sequencer")
SEND_PAGE = 64
REPLICA_TIMEOUT = 30.0


class NoMajority(ChainError):
    """Fewer than a majority of the replicas agree: appends stop until they are back."""


@dataclass
class ReplicaView:
    """What the sequencer last heard from one replica."""

    name: str
    number: int = -1
    hash: bytes = b""
    problem: str | None = None
    reachable: bool = False


class ReplicatedChain(Chain):
    """The local embedded chain, with every block replicated to the ledger replicas.

    `patience` is how long a commit waits for a majority to come up (at start-up, while
    the replicas start beside the controller); afterwards it is 0 and a missing majority
    fails the append at once.
    """

    def __init__(
        self,
        local: EmbeddedChain,
        peers: Peers,
        replicas: Sequence[str],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.local = local
        self.backend = local.backend
        self.chain_id = local.chain_id
        self.peers = peers
        self.replicas = list(replicas)
        self.loop = loop
        self.views = {name: ReplicaView(name) for name in replicas}
        self.committed = -1
        self.patience = 0.0
        self._feeding: dict[str, asyncio.Future[bool]] = {}

    @property
    def majority(self) -> int:
        """How many replicas must agree."""
        return len(self.replicas) // 2 + 1

    def submit(self, raw_tx: bytes) -> Receipt:
        """Commit what is pending, then mine `raw_tx` and commit it on a majority."""
        self.settle()
        receipt = self.local.submit(raw_tx)
        self._commit(self.local.head())
        return receipt

    def settle(self) -> bool:
        """Commit blocks mined but not yet agreed on; raise without a majority."""
        head = self.local.head()
        if head.number <= self.committed:
            return False
        self._commit(head)
        return True

    def _commit(self, head: BlockRef) -> None:
        deadline = time.monotonic() + self.patience
        while True:
            future = asyncio.run_coroutine_threadsafe(self._replicate(head.number), self.loop)
            agreed = future.result()
            if agreed >= self.majority or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if agreed < self.majority:
            raise NoMajority(
                f"only {agreed} of {len(self.replicas)} ledger replicas hold block {head.number}"
                f" (a majority is {self.majority}); it is kept and committed, before any new"
                " append, once enough replicas are back"
            )
        self.committed = head.number

    async def _replicate(self, number: int) -> int:
        """Feed every replica up to `number`; return once a majority agrees or none is pending.

        A replica still catching up keeps being fed in the background: a straggler does not
        hold up appends that a majority has already committed.
        """
        for name in self.replicas:
            task = self._feeding.get(name)
            if task is None or task.done():
                self._feeding[name] = asyncio.ensure_future(self._feed(name, number))
        while True:
            agreed = sum(1 for name in self.replicas if self._agrees(name, number))
            pending = [t for t in self._feeding.values() if not t.done()]
            if agreed >= self.majority or not pending:
                return agreed
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    def _agrees(self, name: str, number: int) -> bool:
        view = self.views[name]
        return view.reachable and view.problem is None and view.number >= number

    async def _feed(self, name: str, number: int) -> bool:
        """Bring one replica up to block `number`; True if it then agrees with the sequencer."""
        view = self.views[name]
        try:
            if not view.reachable:
                self._heard(view, await self._call(name, "replica.head", {}))
            while view.problem is None and view.number < number:
                batch = self.local.logged(view.number + 1, min(number, view.number + SEND_PAGE))
                wire = [[b.number, b.timestamp, b.raw_tx, b.block_hash] for b in batch]
                answer = await self._call(name, "replica.apply", {"blocks": wire})
                before = view.number
                self._heard(view, answer)
                if view.number <= before:
                    break
        except VmsnapError as err:
            view.reachable = False
            log.info("ledger replica %s unreachable: %s", name, err)
            return False
        return view.problem is None and view.number >= number

    async def _call(self, name: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self.peers.call(name, op, args, timeout=REPLICA_TIMEOUT)

    def _heard(self, view: ReplicaView, answer: dict[str, Any]) -> None:
        view.reachable = True
        view.number, view.hash = int(answer["number"]), bytes(answer["hash"])
        view.problem = answer.get("problem")
        if view.problem is None and not self.holds(view.number, view.hash):
            view.problem = f"its block {view.number} differs from the sequencer's"

    def holds(self, number: int, block_hash: bytes) -> bool:
        """False when the sequencer recorded block `number` with another hash."""
        mine = self.local.logged(number, number) if number >= 0 else []
        return not mine or mine[0].block_hash == block_hash

    async def status(self) -> list[dict[str, Any]]:
        """Every replica: head number and hash, lag behind the sequencer, agreed or diverged."""
        head = self.local.head().number
        out: list[dict[str, Any]] = []
        for name in self.replicas:
            view = self.views[name]
            try:
                self._heard(view, await self._call(name, "replica.head", {}))
            except VmsnapError as err:
                view.reachable = False
                out.append({"name": name, "state": "down", "problem": str(err)})
                continue
            state = "diverged" if view.problem else ("agreed" if view.number == head else "behind")
            out.append(
                {
                    "name": name,
                    "state": state,
                    "head_number": view.number,
                    "head_hash": "0x" + view.hash.hex(),
                    "lag": head - view.number,
                    "problem": view.problem,
                }
            )
        return out

    def visible(self) -> int:
        """The last block reads may see: the last one a majority committed.

        Right after start-up nothing is known to be committed yet; the first read then
        commits what the sequencer holds (waiting up to `patience` for a majority).
        """
        if self.committed < 0:
            self.settle()
        return min(self.committed, self.local.head().number)

    def call(self, sender: bytes, to: bytes, data: bytes) -> bytes:
        """Read-only calls run on the sequencer's copy, as of the last committed block."""
        head = self.local.head().number
        visible = self.visible()
        block: int | str = "latest" if visible >= head else visible
        return self.local.call_at(sender, to, data, block)

    def nonce(self, account: bytes) -> int:
        """The account's nonce at the sequencer's head."""
        return self.local.nonce(account)

    def balance(self, account: bytes) -> int:
        """The account's balance at the sequencer's head."""
        return self.local.balance(account)

    def fee_caps(self) -> tuple[int, int]:
        """Fee caps of the sequencer's pending block."""
        return self.local.fee_caps()

    def gas_limit(self) -> int:
        """Gas limit of the sequencer's pending block."""
        return self.local.gas_limit()

    def head(self) -> BlockRef:
        """The last committed block (a block mined but not agreed on is not shown)."""
        return self.local.block(self.visible())

    def logs(self, address: bytes, from_block: int, to_block: int) -> list[RawLog]:
        """Logs up to the last committed block only (uncommitted blocks are not visible)."""
        return self.local.logs(address, from_block, min(to_block, self.committed))

    def close(self) -> None:
        """Close the sequencer's chain."""
        self.local.close()

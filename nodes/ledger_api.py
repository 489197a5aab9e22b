"""The controller's ledger requests: the log, the head, audits, replays and the replicas."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ledger import events
from ledger.errors import InputError, UnknownVm
from ledger.service import Ledger
from nodes.peers import Peers
from nodes.replicated_chain import ReplicatedChain
from nodes.request_args import text
from nodes.server import Handler

Runner = Callable[..., Awaitable[Any]]


class LedgerApi:
    """Requests about the ledger itself."""

    def __init__(self, ledger: Ledger, peers: Peers, on_ledger: Runner, name: str) -> None:
        self.ledger = ledger
        self.peers = peers
        self._run = on_ledger
        self.name = name

    def handlers(self) -> dict[str, Handler]:
        """The operations, by name."""
        return {
            "ledger.log": self.ledger_log,
            "ledger.head": self.ledger_head,
            "ledger.verify": self.ledger_verify,
            "ledger.replay": self.ledger_replay,
            "ledger.nodes": self.ledger_nodes,
        }

    async def ledger_log(self, args: dict[str, Any]) -> dict[str, Any]:
        """Events in order, optionally of one VM and only the last N."""
        vm = args.get("vm")
        limit = args.get("limit")
        stream = None
        if vm is not None:
            if await self._run(self.ledger.projection.vm, str(vm)) is None:
                raise UnknownVm(str(vm))
            stream = events.vm_stream(str(vm))
        if limit is not None and (not isinstance(limit, int) or limit <= 0):
            raise InputError("--limit must be a positive number")
        return {"events": await self._run(self.ledger.projection.events, stream, limit)}

    async def ledger_head(self, args: dict[str, Any]) -> dict[str, Any]:
        """The contract's head and count."""
        head: dict[str, Any] = await self._run(self.ledger.head)
        return head

    async def ledger_verify(self, args: dict[str, Any]) -> dict[str, Any]:
        """Recompute the hash chain and compare the projection with a fresh replay.

        With ``node``: audit that replica alone, and compare its head with the sequencer's
        and the other replicas'.
        """
        if args.get("node") is not None:
            return await self._verify_replica(text(args, "node"))

        def verify() -> dict[str, Any]:
            report, fresh = self.ledger.verify()
            fresh.close()
            return {
                "ok": report.ok,
                "events": report.events,
                "head": report.head,
                "contract_head": report.contract_head,
                "contract_count": report.contract_count,
                "projection_matches": report.projection_matches,
                "problems": report.problems,
            }

        report: dict[str, Any] = await self._run(verify)
        return report

    async def ledger_nodes(self, args: dict[str, Any]) -> dict[str, Any]:
        """Each ledger replica: head, lag, agreed or diverged (empty without replicas)."""
        chain = self.ledger.chain
        if not isinstance(chain, ReplicatedChain):
            return {"sequencer": None, "replicas": []}
        head = await self._run(chain.local.head)
        return {
            "sequencer": {
                "name": self.name,
                "head_number": head.number,
                "head_hash": "0x" + head.hash.hex(),
            },
            "committed": chain.committed,
            "majority": chain.majority,
            "replicas": await chain.status(),
        }

    async def _verify_replica(self, node: str) -> dict[str, Any]:
        chain = self.ledger.chain
        if not isinstance(chain, ReplicatedChain):
            raise InputError("this deployment keeps no ledger replicas (chain.replicas = false)")
        if node not in chain.replicas:
            raise InputError(
                f"{node!r} holds no ledger replica: one of {', '.join(chain.replicas)}"
            )
        report = await self.peers.call(
            node,
            "replica.verify",
            {"contract": self.ledger.contract.address, "deploy_block": self.ledger.deploy_block},
        )
        number = int(report["head_number"])
        problems = list(report["problems"])
        if not await self._run(chain.holds, number, report["head_hash"]):
            problems.append(f"its block {number} differs from the sequencer's")
        others = [
            r["name"]
            for r in await chain.status()
            if r["name"] != node
            and r.get("head_number", -1) >= number >= 0
            and r["state"] == "agreed"
        ]
        return {
            "node": node,
            "ok": not problems,
            "events": report.get("events", 0),
            "head": report.get("head", ""),
            "contract_head": report.get("contract_head", ""),
            "head_number": number,
            "head_hash": "0x" + bytes(report["head_hash"]).hex(),
            "agrees_with": others if not problems else [],
            "problems": problems,
        }

    async def ledger_replay(self, args: dict[str, Any]) -> dict[str, Any]:
        """Rebuild the projection from the chain."""
        started = time.monotonic()
        applied = await self._run(self.ledger.replay)
        return {"events": applied, "seconds": time.monotonic() - started}

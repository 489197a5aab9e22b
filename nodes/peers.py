"""Connections from one node to the others, found through their run files."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from nodes.client import NodeClient
from nodes.config import Config
from nodes.errors import NodeError, NodeUnreachable
from nodes.runfile import RunFile


def node_names(config: Config, role: str) -> list[str]:
    """The names of the topology's nodes of `role`."""
    count = {
        "controller": 1,
        "business": config.topology.business,
        "transfer": config.topology.transfer,
        "backup": config.topology.backup,
    }[role]
    return ["controller"] if role == "controller" else [f"{role}-{i}" for i in range(1, count + 1)]


class Peers:
    """A lazily connected, reusable client per peer node."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self._clients: dict[str, NodeClient] = {}
        self._lock = asyncio.Lock()

    def runfile(self, node: str) -> RunFile:
        """The run file of a running `node`."""
        run = RunFile.read(self.config.run_dir / f"{node}.json")
        if run is None:
            raise NodeUnreachable(node, "-", "it is not running")
        return run

    async def call(
        self,
        node: str,
        op: str,
        args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Call `op` on `node`; a broken connection is dropped and retried once."""
        for attempt in (1, 2):
            client = await self._client(node)
            try:
                return await client.call(op, args, timeout=timeout)
            except NodeUnreachable:
                await self._drop(node)
                if attempt == 2:
                    raise
        raise NodeError(f"unreachable: {node}")

    async def _client(self, node: str) -> NodeClient:
        async with self._lock:
            client = self._clients.get(node)
            if client is None:
                run = self.runfile(node)
                client = NodeClient(
                    run.host,
                    run.port,
                    self.config.secret(),
                    name=self.name,
                    peer=node,
                    timeout=self.config.wire.timeout,
                    max_frame=self.config.wire.max_frame,
                )
                await client.connect()
                self._clients[node] = client
            return client

    async def _drop(self, node: str) -> None:
        async with self._lock:
            client = self._clients.pop(node, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        """Close every connection."""
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

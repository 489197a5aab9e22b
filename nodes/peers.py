"""Connections from one node to the others, found through their run files."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from nodes.client import NodeClient
from nodes.config import Config
from nodes.errors import NodeError, NodeUnreachable
from nodes.runfile import RunFile

VIEWS = "/views"
"""What a client key adds to a node's name for the node's view server."""


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

    async def call_views(
        self,
        node: str,
        op: str,
        args: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Call a read `op` (view_service.READ_OPS) on business `node`'s view server.

        The node itself answers when it runs no view server, or when its view server
        cannot be reached (it is being started again).
        """
        key = f"{node}{VIEWS}"
        if key in self._clients or self.runfile(node).view_port:
            try:
                client = await self._client(key)
                return await client.call(op, args, timeout=timeout)
            except NodeUnreachable:
                await self._drop(key)
        return await self.call(node, op, args, timeout)

    async def _client(self, key: str) -> NodeClient:
        """The client of node `key`, or of its view server when `key` ends in `VIEWS`."""
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                node = key.removesuffix(VIEWS)
                run = self.runfile(node)
                client = NodeClient(
                    run.host,
                    run.view_port if key.endswith(VIEWS) else run.port,
                    self.config.secret(),
                    name=self.name,
                    peer=node,
                    timeout=self.config.wire.timeout,
                    max_frame=self.config.wire.max_frame,
                )
                await client.connect()
                self._clients[key] = client
            return client

    async def _drop(self, key: str) -> None:
        async with self._lock:
            client = self._clients.pop(key, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        """Close every connection."""
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

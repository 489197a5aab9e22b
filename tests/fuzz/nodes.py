"""Authenticated connections to every node of a running local network, for fuzz targets.

The clients live on an event loop of their own in a background thread, so hypothesis
(which is synchronous) can send a request and read the nodes' state between examples
without paying for a new connection each time.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nodes.client import NodeClient
from nodes.errors import RemoteError

T = TypeVar("T")
BACKUPS = ("backup-1", "backup-2", "backup-3")
NODES = ("controller", "business-1", "transfer-1", *BACKUPS)


def run_file(root: Path, node: str) -> dict[str, Any]:
    """What a running node published about itself (port, pid, NBD port)."""
    found: dict[str, Any] = json.loads((root / "data" / "run" / f"{node}.json").read_text())
    return found


class NetworkClients:
    """One connection to each node; `call` answers a result map or the RemoteError raised."""

    def __init__(self, root: Path, timeout: float = 60.0) -> None:
        self.root = root
        self.secret = bytes.fromhex((root / "secret").read_text().strip())
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._clients: dict[str, NodeClient] = {}

    def port(self, node: str) -> int:
        """The request port of `node`."""
        return int(run_file(self.root, node)["port"])

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout + 5)

    async def _client(self, node: str) -> NodeClient:
        client = self._clients.get(node)
        if client is None:
            client = NodeClient("127.0.0.1", self.port(node), self.secret, timeout=self.timeout)
            await client.connect()
            self._clients[node] = client
        return client

    def call(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any] | RemoteError:
        """Send one request on the node's connection; a reported error is returned, not raised."""

        async def call() -> dict[str, Any] | RemoteError:
            client = await self._client(node)
            try:
                return await client.call(op, args)
            except RemoteError as err:
                return err

        return self._run(call())

    def state(self) -> dict[str, Any]:
        """What a bad request must not change: ledger head, volumes, stored chunks, views."""
        found = {
            "ledger": self.call("controller", "ledger.head", {}),
            "volumes": self.call("business-1", "volume.list", {}),
            "transfer": self.call("transfer-1", "node.status", {}),
        }
        for backup in BACKUPS:
            found[backup] = self.call(backup, "chunk.list", {})
        for value in found.values():
            assert isinstance(value, dict), value
        return found

    def close(self) -> None:
        """Close every connection and stop the loop."""

        async def close() -> None:
            for client in self._clients.values():
                await client.close()

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

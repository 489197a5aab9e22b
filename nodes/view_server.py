"""A business node's view server: the snapshot's reads, in a process of their own.

A snapshot reads every changed chunk of a frozen view and sends it to the transfer node.
Done by the business node's own process, that work holds the interpreter lock and the
event loop that also serve the VMs' NBD requests, and a VM's 4 KiB write waits behind it.
So the business node starts a second process, the view server, which answers the
requests that only read (`READ_OPS`: view chunks, patch blocks, live chunk ids,
allocation) from the volumes' files, with a read-only view of their metadata
(nodes/volume_reads.py). It runs at the background nodes' CPU niceness, in a session of
its own.

The business node opens the listening socket and hands it to the process, so its port
(published in the node's run file as ``view_port``) stays the same when the business
node starts it again after it stopped. It dies with the business node. Callers use it
through `Peers.call_views`, which falls back to the business node itself, where the same
requests are served, when the view server cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ledger.errors import VmsnapError
from ledger.vm import check_resource_id, check_vm_name
from nodes.chunks import ChunkCodec
from nodes.client import NodeClient
from nodes.config import VIEW_PORT_OFFSET, Config, load_config
from nodes.errors import NodeError
from nodes.request_args import text
from nodes.runtime import keep_freed_memory, lower_priority
from nodes.server import NodeServer
from nodes.view_service import ViewReads
from nodes.volume_names import VolumeNotFound, export_name
from nodes.volume_reads import VolumeReader

log = logging.getLogger("vmsnap.views")

RESTART_DELAY = 1.0
"""Seconds between starts of a view server that keeps stopping."""
STOP_WAIT = 5.0
"""Seconds a view server has to stop after SIGTERM before it is killed."""
PING_EVERY = 2.0
"""Seconds between the business node's pings of its running view server."""
HANG_AFTER = 10.0
"""Seconds a view server may leave a ping unanswered before it is killed as hung."""
PRUNE_EVERY = 10.0
"""Seconds between checks for deleted volumes, whose files the view server then closes."""
_PR_SET_PDEATHSIG = 1


def view_port(config: Config, name: str) -> int:
    """The configured port of business node `name`'s view server (0: any free port)."""
    base = config.network.base_port
    return base + VIEW_PORT_OFFSET + int(name.rsplit("-", 1)[1]) if base else 0


class ViewServer:
    """The business node's side: the listening socket and the process serving it."""

    def __init__(self, config: Config, name: str) -> None:
        self.config = config
        self.name = name
        self.socket = socket.create_server((config.network.host, view_port(config, name)))
        self.port = int(self.socket.getsockname()[1])
        self._process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The running view server's process id."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        """Start the process, and start it again whenever it stops until `close`."""
        self._watch = asyncio.create_task(self._keep_running())

    async def _keep_running(self) -> None:
        fd = self.socket.fileno()
        while True:
            started = time.monotonic()
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "nodes.view_server",
                "--config",
                str(self.config.path),
                "--name",
                self.name,
                "--fd",
                str(fd),
                "--parent",
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(fd,),
                start_new_session=True,
            )
            watching = asyncio.create_task(self._kill_when_hung(self._process))
            try:
                code = await self._process.wait()
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            log.warning("view server of %s stopped (exit %s); starting it again", self.name, code)
            await asyncio.sleep(max(0.0, RESTART_DELAY - (time.monotonic() - started)))

    async def _kill_when_hung(self, process: asyncio.subprocess.Process) -> None:
        """Ping `process` until it exits; kill it when a ping goes unanswered too long.

        A new process has `network.start_timeout` to answer its first ping.
        """
        client: NodeClient | None = None
        limit = self.config.network.start_timeout
        try:
            while True:
                try:
                    async with asyncio.timeout(limit):
                        if client is None:
                            client = self._pinger(limit + 1)
                            await client.connect()
                        await client.call("ping")
                    limit = HANG_AFTER
                except TimeoutError:
                    log.warning(
                        "view server of %s (pid %d) left a ping unanswered for %g s; killing it",
                        self.name,
                        process.pid,
                        limit,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    return
                except NodeError:
                    # The connection was closed: the process is exiting; `wait` will tell.
                    if client is not None:
                        await client.close()
                    client = None
                await asyncio.sleep(PING_EVERY)
        finally:
            if client is not None:
                await client.close()

    def _pinger(self, timeout: float) -> NodeClient:
        return NodeClient(
            self.config.network.host,
            self.port,
            self.config.secret(),
            name=self.name,
            peer=f"{self.name} views",
            timeout=timeout,
        )

    async def close(self) -> None:
        """Stop the process and close the socket."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_WAIT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.socket.close()


class Readers:
    """The volumes of a business node, opened read-only on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, VolumeReader] = {}

    def find(self, args: dict[str, Any]) -> tuple[str, VolumeReader]:
        """The volume a request names; reopened when it was deleted or created again."""
        vm = check_vm_name(text(args, "vm"))
        resource_id = check_resource_id(text(args, "resource_id"))
        name = export_name(vm, resource_id)
        reader = self._open.get(name)
        if reader is not None and not reader.current():
            del self._open[name]
            reader.close()
            reader = None
        if reader is None:
            folder = self.root / vm / resource_id
            if not (folder / "meta.sqlite").exists():
                raise VolumeNotFound(name)
            reader = self._open[name] = VolumeReader(folder)
        return name, reader

    def prune(self) -> int:
        """Close the volumes deleted or replaced since they were opened; return how many.

        Their files stay on disk while they are open.
        """
        gone = [name for name, reader in self._open.items() if not reader.current()]
        for name in gone:
            self._open.pop(name).close()
        return len(gone)

    def close(self) -> None:
        """Close every volume."""
        for reader in self._open.values():
            reader.close()
        self._open.clear()


async def serve(config: Config, name: str, listening: socket.socket) -> None:
    """Answer `READ_OPS` on `listening` until SIGTERM or SIGINT."""
    readers = Readers(config.node_dir(name) / "volumes")
    codec = ChunkCodec(config.data_key(), config.storage.compression_level)
    server = NodeServer(
        name,
        config.secret(),
        ViewReads(readers.find, codec).handlers(),
        sock=listening,
        max_frame=config.wire.max_frame,
        timeout=config.wire.timeout,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pruning = asyncio.create_task(_prune(readers))
    try:
        host, port = await server.start()
        log.info("view server of %s listening on %s:%d", name, host, port)
        await stop.wait()
    finally:
        pruning.cancel()
        await server.close()
        readers.close()


async def _prune(readers: Readers) -> None:
    while True:
        await asyncio.sleep(PRUNE_EVERY)
        readers.prune()


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent dies; exit if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    """Run the view server the business node started."""
    parser = argparse.ArgumentParser(prog="python -m nodes.view_server")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--fd", required=True, type=int, help="the listening socket")
    parser.add_argument("--parent", required=True, type=int, help="the business node's pid")
    args = parser.parse_args(argv)
    _die_with(args.parent)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {args.name} views %(levelname)s %(name)s: %(message)s",
    )
    listening = socket.socket(fileno=args.fd)
    try:
        config = load_config(args.config, os.environ)
    except VmsnapError as err:
        raise SystemExit(f"view server of {args.name}: {err}") from None
    if config.storage.background_nice:
        lower_priority(config.storage.background_nice)
    keep_freed_memory()
    asyncio.run(serve(config, args.name, listening))


if __name__ == "__main__":
    main()

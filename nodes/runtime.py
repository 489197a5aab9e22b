"""Run one node process: its service, its server, its run file, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from ledger.errors import InputError
from nodes.config import Config
from nodes.runfile import RunFile
from nodes.server import NodeServer

ROLES = ("controller", "business", "transfer", "backup")
BACKGROUND_ROLES = ("transfer", "backup")
PORT_OFFSETS = {"controller": 0, "business": 10, "transfer": 20, "backup": 30}
KEEP_FREED = 64 << 20
"""Freed heap memory a node keeps for reuse (per malloc arena) instead of returning it."""
HEAP_UP_TO = 32 << 20
"""Allocations up to this size come from the heap, so their memory is reused too."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
log = logging.getLogger("vmsnap.node")


class Service(Protocol):
    """What every role offers the runtime."""

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        """The operations the node serves."""
        ...

    async def close(self) -> None:
        """Release everything."""
        ...


def run_node(config: Config, role: str, name: str, reply_delay: float = 0.0) -> None:
    """Run a node in the foreground until SIGTERM or SIGINT (`reply_delay`: a slow node)."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    if role in BACKGROUND_ROLES and config.storage.background_nice:
        lower_priority(config.storage.background_nice)
    keep_freed_memory()
    asyncio.run(_serve(config, role, name, reply_delay))


def lower_priority(nice: int) -> None:
    """Give this process, and the session it leads, CPU niceness `nice`.

    Every node leads a session of its own, and Linux's autogroup scheduling shares the CPU
    between sessions before it looks at a process's own niceness. So the session's
    niceness (``/proc/self/autogroup``) is set too; without it a busy transfer node would
    take as much CPU as the business node serving the VMs' disks. A kernel without
    autogroups has no such file, and the process niceness alone ranks the node.
    """
    os.nice(nice)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(nice))


def keep_freed_memory() -> bool:
    """Make the C allocator keep freed memory for reuse; False where it cannot be told.

    A node's data path allocates and frees the same few megabytes over and over: chunk
    reads, frames, compressed and encrypted copies. By default glibc hands freed memory
    at the top of a heap back to the kernel and maps large blocks afresh, so every batch
    pays a page fault per 4 KiB page it touches again (about 16 per 64 KiB chunk, most of
    an incremental's CPU on the business node). Raising the trim and mmap thresholds
    keeps that memory mapped; each malloc arena keeps at most `KEEP_FREED` bytes unused.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_UP_TO)) and bool(
        mallopt(_M_TRIM_THRESHOLD, KEEP_FREED)
    )


def rpc_port(config: Config, role: str, name: str) -> int:
    """The configured port of a node (0: any free port)."""
    base = config.network.base_port
    if not base:
        return 0
    index = 0 if role == "controller" else int(name.rsplit("-", 1)[1])
    return base + PORT_OFFSETS[role] + index


async def open_service(config: Config, role: str, name: str) -> tuple[Service, dict[str, int]]:
    """Open the service of `role`; return it and the ports it adds to the run file."""
    if role == "controller":
        from nodes.controller import Controller

        return await Controller.open(config, name), {}
    if role == "business":
        from nodes.business import Business

        business = await Business.open(config, name)
        return business, {"nbd_port": business.nbd_port, "view_port": business.view_port}
    if role == "backup":
        from nodes.backup import Backup

        return await Backup.open(config, name), {}
    from nodes.transfer import Transfer

    return await Transfer.open(config, name), {}


async def _serve(config: Config, role: str, name: str, reply_delay: float) -> None:
    service, ports = await open_service(config, role, name)
    server = NodeServer(
        name,
        config.secret(),
        service.handlers(),
        host=config.network.host,
        port=rpc_port(config, role, name),
        max_frame=config.wire.max_frame,
        timeout=config.wire.timeout,
        reply_delay=reply_delay,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        host, port = await server.start()
        run = RunFile(name, role, os.getpid(), host, port, time.time(), **ports)
        runfile = run.write(config.run_dir)
        log.info("%s %s listening on %s:%d", role, name, host, port)
        start_recovery = getattr(service, "start_recovery", None)
        if start_recovery is not None:
            start_recovery()
        await stop.wait()
        log.info("stopping")
        runfile.unlink(missing_ok=True)
    finally:
        await server.close()
        await service.close()

"""Run one node process: its service, its server, its run file, until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from ledger.errors import InputError
from nodes.config import Config
from nodes.runfile import RunFile
from nodes.server import NodeServer

ROLES = ("controller",)
log = logging.getLogger("vmsnap.node")


def run_node(config: Config, role: str, name: str) -> None:
    """Run a node in the foreground until SIGTERM or SIGINT."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve(config, role, name))


async def _serve(config: Config, role: str, name: str) -> None:
    from nodes.controller import Controller

    controller = await Controller.open(config, name)
    server = NodeServer(
        name,
        config.secret(),
        controller.handlers(),
        host=config.network.host,
        port=config.network.base_port,
        max_frame=config.wire.max_frame,
        timeout=config.wire.timeout,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        host, port = await server.start()
        runfile = RunFile(name, role, os.getpid(), host, port, time.time()).write(config.run_dir)
        log.info("%s %s listening on %s:%d", role, name, host, port)
        await stop.wait()
        log.info("stopping")
        runfile.unlink(missing_ok=True)
    finally:
        await server.close()
        await controller.close()

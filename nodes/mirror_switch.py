"""Switching a VM's disks to the mirrors of a fast rollback, and making sure it happened.

Once a fast rollback's start tag is on chain the rollback has begun, and the background
restore will overwrite the business volumes: the VM must be served from its mirrors by
then. The switch stops the VM through its driver, redirects each disk's NBD export to its
mirror (``volume.redirect``, idempotent) and starts the VM. When the switch could not be
made (the business node was down, or the controller stopped in between), `ensure_switched`
makes it once the node answers, and skips it when every export already serves its mirror.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ledger import events
from ledger.errors import VmsnapError
from nodes.peers import Peers
from nodes.vm_driver import VmDriver

SWITCH_ATTEMPTS = 600
SWITCH_RETRY = 1.0
log = logging.getLogger("vmsnap.fast_rollback")


async def switch_to_mirrors(
    peers: Peers,
    driver: VmDriver,
    vm: str,
    disks: list[dict[str, Any]],
    tags: tuple[events.MirrorTag, ...],
) -> None:
    """Stop the VM, serve each disk from its mirror, start the VM."""
    await driver.stop(vm)
    node_of = {d["resource_id"]: d["node"] for d in disks}
    for tag in tags:
        await peers.call(
            node_of[tag.resource_id],
            "volume.redirect",
            {"vm": vm, "resource_id": tag.resource_id, "node": tag.node, "mirror": tag.mirror},
        )
    await driver.start(vm)


async def switched(
    peers: Peers, vm: str, disks: list[dict[str, Any]], tags: tuple[events.MirrorTag, ...]
) -> bool:
    """True when every disk's export already serves its mirror."""
    node_of = {d["resource_id"]: d["node"] for d in disks}
    for tag in tags:
        listed = await peers.call(node_of[tag.resource_id], "volume.list", {})
        served = {(v["vm"], v["resource_id"]): v.get("mirror") for v in listed["volumes"]}
        if served.get((vm, tag.resource_id)) != tag.mirror:
            return False
    return True


async def ensure_switched(
    peers: Peers,
    driver: VmDriver,
    vm: str,
    disks: list[dict[str, Any]],
    tags: tuple[events.MirrorTag, ...],
) -> bool:
    """Switch unless already switched, retrying while a node is down; False if it never could."""
    for _attempt in range(SWITCH_ATTEMPTS):
        try:
            if not await switched(peers, vm, disks, tags):
                await switch_to_mirrors(peers, driver, vm, disks, tags)
        except VmsnapError as err:
            log.info("%s waits to be switched to its mirrors: %s", vm, err)
            await asyncio.sleep(SWITCH_RETRY)
        else:
            return True
    return False

"""A restarted business node releases the frozen views of snapshots that can no longer need them.

The controller releases a snapshot's frozen views when it commits or undoes the snapshot.
If the business node was down at that moment the release could not reach it, and the view
would stay, preserving every chunk the VM overwrites from then on. So when a business node
starts, it asks the controller about each view it holds (a view is named by its snapshot's
id) and releases those whose snapshot the ledger records as failed, deleted or retired. A
view of a pending snapshot, or of a committed one not yet released, is left to the
controller's own workflow; so is a view the ledger does not know.
"""

from __future__ import annotations

import asyncio
import logging

from nodes.errors import NodeError, RemoteError
from nodes.peers import Peers
from nodes.volume import Volume

FINISHED = frozenset({"failed", "deleted", "retired"})
ATTEMPTS = 120
RETRY = 1.0
log = logging.getLogger("vmsnap.business")


async def release_stale_views(volumes: dict[str, Volume], peers: Peers) -> int:
    """Release every view whose snapshot is finished; retry while the controller is down."""
    for _attempt in range(ATTEMPTS):
        try:
            return await _release(volumes, peers)
        except NodeError as err:
            log.info("stale views wait for the controller: %s", err)
            await asyncio.sleep(RETRY)
    log.warning("stale views not checked: the controller did not answer")
    return 0


async def _release(volumes: dict[str, Volume], peers: Peers) -> int:
    released = 0
    for name, volume in list(volumes.items()):
        for view in volume.views():
            try:
                reply = await peers.call("controller", "snapshot.show", {"id": view.name})
            except RemoteError as err:
                log.warning("view %s of %s kept: %s", view.name[:12], name, err)
                continue
            if reply["snapshot"]["status"] in FINISHED:
                await asyncio.to_thread(volume.release, view.name)
                log.info("released the stale view %s of %s", view.name[:12], name)
                released += 1
    return released

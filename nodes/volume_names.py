"""How a business node names its volumes: one NBD export per VM disk."""

from __future__ import annotations

from ledger.errors import NotFound


def export_name(vm: str, resource_id: str) -> str:
    """The NBD export name of a VM disk."""
    return f"{vm}/{resource_id}"


class VolumeNotFound(NotFound):
    """No volume for that disk on this node."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no volume {name!r} on this business node")

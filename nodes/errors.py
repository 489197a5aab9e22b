"""Errors of the node runtime, the wire protocol and the local network.

::

    VmsnapError
    └── NodeError                  exit 3
        ├── NetworkNotRunning      no controller answers
        ├── NodeUnreachable
        ├── ProtocolError          a malformed or oversized frame
        │   └── NbdProtocolError   an NBD client broke the protocol
        ├── AuthenticationFailed
        ├── RequestTimeout
        ├── RemoteError            a peer reported an error it could not map
        ├── VolumeError            a bad range or an unknown view on a volume
        ├── ChunkMissing           the chunk store holds no copy of a chunk
        ├── ChunkCorrupted         a stored copy fails its checksum or id check
        ├── ChunkStoreError        the chunk store's files or index cannot be used
        ├── ManifestCorrupted      a stored manifest is malformed
        └── VmDriverError          the VM driver could not stop or start a VM
"""

from __future__ import annotations

from ledger.errors import VmsnapError


class NodeError(VmsnapError):
    """A node or the network between nodes failed."""

    exit_code = 3


class NetworkNotRunning(NodeError):
    """No local network is up for this deployment."""

    def __init__(self) -> None:
        super().__init__("no network running: start one with vmsnap up")


class NodeUnreachable(NodeError):
    """A node did not accept a connection."""

    def __init__(self, name: str, address: str, reason: str) -> None:
        super().__init__(f"node {name} at {address} is unreachable: {reason}")
        self.name = name


class ProtocolError(NodeError):
    """A peer sent something that is not a valid frame."""


class AuthenticationFailed(NodeError):
    """The peer could not prove it holds the deployment's secret."""

    def __init__(self, peer: str) -> None:
        super().__init__(f"authentication with {peer} failed: wrong or missing secret")


class RequestTimeout(NodeError):
    """A peer did not answer in time."""

    def __init__(self, op: str, seconds: float) -> None:
        super().__init__(f"request {op} timed out after {seconds:g} s")


class RemoteError(NodeError):
    """An error reported by a peer, re-raised on this side."""

    def __init__(self, kind: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


class VolumeError(NodeError):
    """A volume operation is impossible (a bad range, an unknown view)."""


class ChunkMissing(NodeError):
    """The chunk store has no copy of a chunk."""

    def __init__(self, chunk_id: bytes) -> None:
        super().__init__(f"chunk {chunk_id.hex()} is missing")
        self.chunk_id = chunk_id


class ChunkCorrupted(NodeError):
    """A stored copy of a chunk is damaged: wrong checksum, id, format or key."""

    def __init__(self, chunk_id: bytes, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"chunk {chunk_id.hex()} is corrupted{detail}")
        self.chunk_id = chunk_id
        self.reason = reason


class ChunkStoreError(NodeError):
    """The chunk store's folder, packs or index cannot be used."""

    def __init__(self, folder: str, problem: str) -> None:
        super().__init__(f"chunk store {folder}: {problem}")
        self.folder = folder


class StorageFull(NodeError):
    """A backup node's store would grow past its quota (``storage.quota_bytes``)."""

    def __init__(self, node: str, used: int, incoming: int, quota: int) -> None:
        super().__init__(
            f"backup node {node} is full: {used} bytes stored + {incoming} incoming "
            f"exceeds its quota of {quota} bytes"
        )


class NbdProtocolError(ProtocolError):
    """An NBD client sent something the protocol forbids; its connection is closed."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"NBD protocol violation: {problem}")
        self.problem = problem


class ManifestCorrupted(NodeError):
    """A stored manifest is malformed or does not match its root."""


class VmDriverError(NodeError):
    """The VM driver could not stop, start or query a VM."""

    def __init__(self, vm: str, action: str, problem: str) -> None:
        super().__init__(f"cannot {action} VM {vm}: {problem}")
        self.vm = vm
        self.action = action
        self.problem = problem

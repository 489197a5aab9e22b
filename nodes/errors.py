"""Errors of the node runtime, the wire protocol and the local network.

::

    VmsnapError
    └── NodeError                  exit 3
        ├── NetworkNotRunning      no controller answers
        ├── NodeUnreachable
        ├── ProtocolError          a malformed or oversized frame
        ├── AuthenticationFailed
        ├── RequestTimeout
        └── RemoteError            a peer reported an error it could not map
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

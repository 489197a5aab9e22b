"""The chain adapter interface, its value types, and the factory by backend name."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ledger.errors import ConfigError

BACKENDS = ("eth-tester", "rpc")


@dataclass(frozen=True)
class BlockRef:
    """A block as the ledger needs it: number, hash and timestamp."""

    number: int
    hash: bytes
    timestamp: int


@dataclass(frozen=True)
class RawLog:
    """One EVM log entry, not yet decoded."""

    address: bytes
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True)
class Receipt:
    """The outcome of one mined transaction."""

    tx_hash: bytes
    status: int
    block_number: int
    block_hash: bytes
    gas_used: int
    contract_address: bytes | None
    logs: tuple[RawLog, ...]


@dataclass(frozen=True)
class ChainSettings:
    """How to reach the chain: the embedded eth-tester backend or a JSON-RPC node."""

    backend: str = "eth-tester"
    rpc_url: str = ""
    data_dir: Path | None = None
    genesis_timestamp: int = 1_767_225_600
    funded: tuple[str, ...] = ()
    timeout: float = 30.0


class Chain(ABC):
    """An Ethereum chain the ledger contract lives on.

    Transactions arrive signed; the adapter only carries them. ``submit``
    returns once the transaction is mined and, for a chain this process hosts,
    durably recorded.
    """

    backend: str
    chain_id: int

    @abstractmethod
    def submit(self, raw_tx: bytes) -> Receipt:
        """Send a signed raw transaction and wait for its receipt."""

    def settle(self) -> bool:
        """Commit blocks mined but not yet agreed on; True if there were any (replicated chains)."""
        return False

    @abstractmethod
    def call(self, sender: bytes, to: bytes, data: bytes) -> bytes:
        """Run a read-only call at the head; raise TransactionReverted on a revert."""

    @abstractmethod
    def nonce(self, account: bytes) -> int:
        """Return the next nonce of `account`."""

    @abstractmethod
    def balance(self, account: bytes) -> int:
        """Return the balance of `account` in wei at the head."""

    @abstractmethod
    def fee_caps(self) -> tuple[int, int]:
        """Return (max fee per gas, max priority fee per gas) for a new transaction."""

    @abstractmethod
    def gas_limit(self) -> int:
        """Return the gas limit of the next block."""

    @abstractmethod
    def head(self) -> BlockRef:
        """Return the latest mined block."""

    @abstractmethod
    def logs(self, address: bytes, from_block: int, to_block: int) -> list[RawLog]:
        """Return the logs `address` emitted in blocks from_block..to_block, in order."""

    @abstractmethod
    def close(self) -> None:
        """Release files and connections."""


def open_chain(settings: ChainSettings, clock: Callable[[], float] = time.time) -> Chain:
    """Open the chain named by ``settings.backend``."""
    if settings.backend == "eth-tester":
        from ledger.tester_chain import EmbeddedChain

        if settings.data_dir is None:
            raise ConfigError("chain.data_dir", "the eth-tester backend needs a data folder")
        return EmbeddedChain.open(settings, clock)
    if settings.backend == "rpc":
        from ledger.rpc_chain import RpcChain

        if not settings.rpc_url:
            raise ConfigError("chain.rpc_url", "the rpc backend needs a URL")
        return RpcChain(settings.rpc_url, settings.timeout)
    raise ConfigError(
        "chain.backend", f"unknown backend {settings.backend!r}; use one of {BACKENDS}"
    )

"""The error tree of vmsnap.

Every error a user can see derives from :class:`VmsnapError`, which carries a
one-line message and a process exit code. Subsystems add a sub-base and leaf
errors that take structured arguments and build their own message. Foreign
exceptions are translated once, at the adapter that meets them::

    VmsnapError                    exit 1
    ├── InputError                 exit 2   bad arguments, bad config values
    │   └── ConfigError
    ├── NotFound                   exit 4
    │   └── UnknownVm
    ├── Conflict                   exit 5
    │   ├── VmExists
    │   └── VersionConflict
    └── LedgerError                exit 6
        ├── ChainError             the chain refused or could not be reached
        │   ├── TransactionReverted
        │   └── Unauthorised
        ├── KeyNotHeld             the account an action must sign with is not held here
        ├── LedgerCorrupted        stored history disagrees with itself
        └── ContractError          the contract source failed to compile

``nodes.errors`` adds the node and network branch.
"""

from __future__ import annotations


class VmsnapError(Exception):
    """Base of every error vmsnap reports to a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(VmsnapError):
    """The user gave a value vmsnap cannot accept."""

    exit_code = 2


class ConfigError(InputError):
    """The configuration file or an override is invalid."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"configuration {where}: {problem}")


class NotFound(VmsnapError):
    """A named thing does not exist."""

    exit_code = 4


class UnknownVm(NotFound):
    """No VM of that name is registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown VM {name!r}: see vmsnap vm list")
        self.name = name


class Conflict(VmsnapError):
    """The request contradicts what is already recorded."""

    exit_code = 5


class VmExists(Conflict):
    """A VM of that name is already registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"VM {name!r} is already registered")
        self.name = name


class VersionConflict(Conflict):
    """A stream moved on since the caller read it (optimistic concurrency)."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream} is at version {actual}, expected {expected}: "
            "another operation changed it first"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class LedgerError(VmsnapError):
    """The ledger cannot do what was asked."""

    exit_code = 6


class ChainError(LedgerError):
    """The chain backend failed or could not be reached."""


class TransactionReverted(ChainError):
    """The contract rejected a transaction."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the ledger contract refused the transaction: {reason}")
        self.reason = reason


class Unauthorised(ChainError):
    """The sending account lacks the role the call needs."""

    def __init__(self, account: str, reason: str) -> None:
        super().__init__(f"account {account} is not allowed: {reason}")
        self.account = account


class KeyNotHeld(LedgerError):
    """The key an action must be signed with is not held by this process; nothing was done."""

    def __init__(self, role: str, setting: str, action: str) -> None:
        super().__init__(
            f"{action} needs the {role} key ({setting}), which this controller does not hold;"
            " nothing was changed"
        )
        self.role = role


class LedgerCorrupted(LedgerError):
    """Stored ledger data disagrees with itself or with the chain."""

    def __init__(self, what: str) -> None:
        super().__init__(f"ledger integrity check failed: {what}")


class ContractError(LedgerError):
    """The contract source could not be compiled or loaded."""

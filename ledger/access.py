"""Who may do what on the ledger: the admin, operator and deleter accounts and their roles.

A deployment signs with three keys, each an account on the contract::

    admin     deploys the contract; enrols and removes accounts (``enrol``/``remove``),
              needed for nothing else
    operator  ROLE_OPERATOR: appends every event except those that delete
    deleter   ROLE_OPERATOR | ROLE_DELETER: appends the delete workflow's events, the
              last of which marks the snapshot DELETED or RETIRED

The contract holds the truth: ``roles(account)`` is a bitmask, and every change
is logged as ``RolesChanged(account, roles, by)``. A deployment made before the
keys were separated has one key that deployed the contract and holds every role.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi.abi import decode as abi_decode
from eth_utils.address import is_hex_address, to_checksum_address
from eth_utils.crypto import keccak

from ledger.contract import ROLE_ALL, ROLE_DELETER, ROLE_OPERATOR, LedgerContract
from ledger.errors import InputError

ROLES = {"operator": ROLE_OPERATOR, "deleter": ROLE_ALL}
OPERATOR_ROLES = ROLES["operator"]
DELETER_ROLES = ROLES["deleter"]
_ROLES_CHANGED = keccak(text="RolesChanged(address,uint256,address)")
GAS_ALLOWANCE = 1_000 * 10**18
"""What a newly granted account is topped up to, in wei, when the admin can spare it."""


@dataclass(frozen=True)
class RoleChange:
    """One ``RolesChanged`` log: `account` now holds `roles`, set by `by` in `block_number`."""

    account: str
    roles: int
    by: str
    block_number: int


def role_mask(name: str) -> int:
    """The role bitmask a role name grants: ``operator`` or ``deleter`` (which also appends)."""
    try:
        return ROLES[name]
    except KeyError:
        raise InputError(f"unknown role {name!r}: use one of {', '.join(ROLES)}") from None


def role_names(mask: int) -> list[str]:
    """The names of the roles in `mask`, e.g. ``["operator", "deleter"]``."""
    names = []
    if mask & ROLE_OPERATOR:
        names.append("operator")
    if mask & ROLE_DELETER:
        names.append("deleter")
    return names


def checked_address(text: str) -> str:
    """`text` as a checksummed account address; anything else is an input error."""
    if not is_hex_address(text):
        raise InputError(f"{text!r} is not an account address (0x and 40 hex digits)")
    return to_checksum_address(text)


def role_changes(contract: LedgerContract, from_block: int = 0) -> list[RoleChange]:
    """Every ``RolesChanged`` log of the contract since `from_block`, in order."""
    head = contract.chain.head().number
    changes = []
    for raw in contract.chain.logs(contract.address, from_block, head):
        if len(raw.topics) != 2 or raw.topics[0] != _ROLES_CHANGED:
            continue
        roles, by = abi_decode(["uint256", "address"], raw.data)
        account = to_checksum_address(raw.topics[1][12:])
        changes.append(RoleChange(account, int(roles), to_checksum_address(by), raw.block_number))
    return changes


def accounts(contract: LedgerContract, from_block: int = 0) -> list[dict[str, object]]:
    """Every account ever given roles, with the roles the contract holds for it now."""
    last: dict[str, RoleChange] = {}
    for change in role_changes(contract, from_block):
        last[change.account] = change
    admin = contract.admin()
    rows: list[dict[str, object]] = []
    for account, change in last.items():
        mask = contract.roles(account)
        rows.append(
            {
                "account": account,
                "roles": role_names(mask),
                "admin": account == admin,
                "changed_by": change.by,
                "changed_in_block": change.block_number,
            }
        )
    return rows


def top_up(admin: LedgerContract, account: str) -> int:
    """Bring `account` up to GAS_ALLOWANCE from the admin, if the admin keeps ten times that.

    Appends cost gas: on the embedded chain only the accounts funded at genesis hold
    ether, so an account granted later would otherwise be unable to sign anything.
    """
    chain = admin.chain
    missing = GAS_ALLOWANCE - chain.balance(bytes.fromhex(account[2:]))
    if missing <= 0:
        return 0
    if chain.balance(bytes.fromhex(admin.account.address[2:])) < 10 * GAS_ALLOWANCE:
        return 0
    admin.send_ether(account, missing)
    return missing

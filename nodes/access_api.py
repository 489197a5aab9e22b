"""The controller's access requests: which accounts may write to the ledger, and changing it.

Granting and revoking are signed by the admin key, read from its file only for
the request (``deployment.admin_key_file``): a controller runs day to day
without it, and refuses these two requests in one line while it is absent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ledger import access
from ledger.service import Ledger
from nodes.config import Config
from nodes.request_args import text
from nodes.server import Handler

Runner = Callable[..., Awaitable[Any]]


class AccessApi:
    """Requests about the contract's roles."""

    def __init__(self, config: Config, ledger: Ledger, on_ledger: Runner) -> None:
        self.config = config
        self.ledger = ledger
        self._run = on_ledger

    def handlers(self) -> dict[str, Handler]:
        """The operations, by name."""
        return {
            "access.list": self.list_access,
            "access.grant": self.grant,
            "access.revoke": self.revoke,
        }

    async def list_access(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every account ever given roles, with its roles now."""
        return {"accounts": await self._run(self.ledger.access)}

    async def grant(self, args: dict[str, Any]) -> dict[str, Any]:
        """Give an account exactly the roles of `role` (``operator`` or ``deleter``)."""
        account = access.checked_address(text(args, "account"))
        roles = access.role_mask(text(args, "role"))
        funded = await self._run(self.ledger.grant, self.config.admin_key(), account, roles)
        # Wei amounts outgrow the wire's 64-bit integers: they travel as decimal text.
        return {**await self._row(account), "funded_wei": str(funded)}

    async def revoke(self, args: dict[str, Any]) -> dict[str, Any]:
        """Take every role from an account."""
        account = access.checked_address(text(args, "account"))
        await self._run(self.ledger.revoke, self.config.admin_key(), account)
        return await self._row(account)

    async def _row(self, account: str) -> dict[str, Any]:
        mask = await self._run(self.ledger.contract.roles, account)
        return {"account": account, "roles": access.role_names(mask)}

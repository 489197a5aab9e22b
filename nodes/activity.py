"""What each VM is busy with: at most one snapshot or one rollback at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ledger.errors import Conflict


class VmBusy(Conflict):
    """The VM is already being snapshotted or rolled back."""

    def __init__(self, vm: str, kind: str, ident: str) -> None:
        doing = "has a snapshot in flight" if kind == "snapshot" else "is being rolled back"
        super().__init__(f"VM {vm!r} {doing} ({ident[:12]}); wait for it to finish")


class Activity:
    """The controller's record of the workflow each VM is in."""

    def __init__(self) -> None:
        self._busy: dict[str, tuple[str, str]] = {}

    def check(self, vm: str) -> None:
        """Refuse if `vm` is busy."""
        if vm in self._busy:
            raise VmBusy(vm, *self._busy[vm])

    @contextmanager
    def claim(self, vm: str, kind: str, ident: str) -> Iterator[None]:
        """Hold `vm` for one workflow of `kind` (snapshot or rollback)."""
        self.check(vm)
        self._busy[vm] = (kind, ident)
        try:
            yield
        finally:
            self._busy.pop(vm, None)

    def current(self, vm: str, kind: str) -> str | None:
        """The id of `vm`'s running workflow of `kind`, if any."""
        busy = self._busy.get(vm)
        return busy[1] if busy and busy[0] == kind else None

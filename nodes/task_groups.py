"""Requests run together in a task group, failing as the first of them failed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from ledger.errors import VmsnapError

T = TypeVar("T")


def first_error(group: BaseExceptionGroup[VmsnapError]) -> VmsnapError:
    """The first error a task group collected (what the caller reports)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, VmsnapError)
    return first


async def run_all(work: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `work` together; the results in order, or the first VmsnapError raised.

    When one fails the others are cancelled, and the caller sees that error itself,
    not "unhandled errors in a TaskGroup".
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(item) for item in work]
    except* VmsnapError as failed:
        raise first_error(failed) from None
    return [task.result() for task in tasks]

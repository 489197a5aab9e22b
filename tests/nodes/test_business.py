"""The business node's snapshot reads, called in process on a real volume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ledger.errors import InputError
from nodes.block_masks import BLOCK
from nodes.business import Business
from nodes.config import Config
from nodes.deployment import init_deployment

KiB = 1 << 10
CHUNK = 64 * KiB
SIZE = 4 * CHUNK + 5 * KiB  # the last chunk: a 4 KiB block and one of 1 KiB
DISK = {"vm": "vm-1", "resource_id": "disk-1"}

Call = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    yield init_deployment(tmp_path_factory.mktemp("business") / "deployment").config


@asynccontextmanager
async def business(config: Config, resource_id: str) -> AsyncIterator[tuple[Business, Call]]:
    """A business node (not serving NBD) holding one fresh volume, deleted afterwards."""
    node = Business(config, "business-1")
    handlers = node.handlers()

    async def call(op: str, **args: Any) -> dict[str, Any]:
        return await handlers[op]({**DISK, "resource_id": resource_id, **args})

    try:
        await call("volume.create", size=SIZE, chunk_size=CHUNK)
        try:
            yield node, call
        finally:
            await call("volume.delete")
    finally:
        await node.close()


def at(idx: int, within: int) -> int:
    return idx * CHUNK + within


def test_changed_with_masks_pairs_each_chunk_with_its_written_blocks(config: Config) -> None:
    async def run() -> None:
        async with business(config, "changed-masks") as (_node, call):
            await call("volume.write", offset=at(0, 3 * BLOCK), data=b"x" * 10)
            await call("volume.write", offset=at(2, 15 * BLOCK), data=b"x" * (BLOCK + 1))
            await call("volume.zero", offset=at(4, BLOCK), length=1024)
            await call("volume.freeze", view="v1")

            plain = await call("volume.changed", view="v1")
            masked = await call("volume.changed", view="v1", masks=True)
            paged = await call("volume.changed", view="v1", masks=True, start=1, limit=2)

            assert plain == {"indexes": [0, 2, 3, 4], "more": False}
            assert masked == {
                "indexes": [0, 2, 3, 4],
                "masks": [1 << 3, 1 << 15, 1, 0b10],
                "more": False,
            }
            assert paged == {"indexes": [2, 3], "masks": [1 << 15, 1], "more": True}
            with pytest.raises(InputError):
                await call("volume.changed", view="v1", masks="yes")

    asyncio.run(run())


def test_read_blocks_returns_the_views_selected_blocks_and_whole_chunk_ids(
    config: Config,
) -> None:
    async def run() -> None:
        async with business(config, "read-blocks") as (node, call):
            frozen = bytearray(bytes(range(1, 256)) * (SIZE // 255 + 1))[:SIZE]
            await call("volume.write", offset=0, data=bytes(frozen))
            await call("volume.zero", offset=at(1, 0), length=CHUNK)
            frozen[at(1, 0) : at(2, 0)] = bytes(CHUNK)
            await call("volume.freeze", view="v1")
            await call("volume.write", offset=0, data=b"later" * 1000)
            indexes, masks = [0, 1, 2, 4], [0b1001, 0b1, 0xFFFF, 0b10]

            found = await call("volume.read_blocks", view="v1", indexes=indexes, masks=masks)

            chunks = [bytes(frozen[i * CHUNK : (i + 1) * CHUNK]) for i in indexes]
            assert found["ids"] == [
                node.codec.chunk_id(chunks[0]),
                None,
                node.codec.chunk_id(chunks[2]),
                node.codec.chunk_id(chunks[3]),
            ]
            assert found["blocks"] == [
                chunks[0][:BLOCK] + chunks[0][3 * BLOCK : 4 * BLOCK],
                bytes(BLOCK),
                chunks[2],
                chunks[3][BLOCK:],
            ]
            assert len(found["blocks"][3]) == KiB
            assert found["bytes"] == 2 * BLOCK + BLOCK + CHUNK + KiB

    asyncio.run(run())


@pytest.mark.parametrize(
    ("indexes", "masks"),
    [
        ([0], [0]),
        ([0], [1 << 16]),
        ([4], [0b100]),
        ([0], [-1]),
        ([0], [True]),
        ([0], ["1"]),
        ([0, 1], [1]),
        ([0], 1),
        ([0], None),
        ([5], [1]),
        (list(range(65)), [1] * 65),
    ],
)
def test_read_blocks_refuses_masks_that_do_not_fit_their_chunks(
    config: Config, indexes: list[int], masks: Any
) -> None:
    async def run() -> None:
        async with business(config, "bad-masks") as (_node, call):
            await call("volume.freeze", view="v1")
            with pytest.raises(InputError):
                await call("volume.read_blocks", view="v1", indexes=indexes, masks=masks)

    asyncio.run(run())

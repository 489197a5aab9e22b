"""A VM disk's export switching between two real volumes: nothing lost, nothing split."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodes.switch import Switch
from nodes.volume import Volume

MiB = 1 << 20


def volumes(tmp_path: Path) -> tuple[Volume, Volume]:
    return Volume.create(tmp_path / "a", MiB, 65536), Volume.create(tmp_path / "b", MiB, 65536)


def test_a_write_that_arrives_while_held_lands_on_the_new_target(tmp_path: Path) -> None:
    first, second = volumes(tmp_path)

    async def scenario() -> None:
        switch = Switch(first)
        await switch.write(0, b"\x01" * 4096)
        await switch.hold()
        late = asyncio.create_task(switch.write(4096, b"\x02" * 4096))
        await asyncio.sleep(0.05)
        assert not late.done(), "held writes wait"
        switch.release(second)
        await late
        assert await switch.read(4096, 4096) == b"\x02" * 4096

    asyncio.run(scenario())
    assert first.read_live(0, 4096) == b"\x01" * 4096
    assert first.read_live(4096, 4096) == bytes(4096)
    assert second.read_live(4096, 4096) == b"\x02" * 4096


def test_hold_waits_for_the_requests_in_flight(tmp_path: Path) -> None:
    first, _second = volumes(tmp_path)

    class Slow:
        size, read_only = MiB, False
        finished = False

        async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
            await asyncio.sleep(0.1)
            await first.write(offset, data)
            Slow.finished = True

    async def scenario() -> None:
        switch = Switch(Slow())  # type: ignore[arg-type]
        writing = asyncio.create_task(switch.write(0, b"\x07" * 512))
        await asyncio.sleep(0.01)
        await switch.hold()
        assert Slow.finished, "hold returned only after the write in flight was done"
        await writing

    asyncio.run(scenario())
    assert first.read_live(0, 512) == b"\x07" * 512

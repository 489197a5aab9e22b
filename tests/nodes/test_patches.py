"""Patched chunks and format-2 manifests: rebuilding, checking, encoding and roots."""

from __future__ import annotations

import asyncio
import random

import cbor2
import pytest

from ledger.merkle import merkle_root
from nodes.block_masks import BLOCK, pick_blocks
from nodes.chunks import ChunkCodec
from nodes.errors import ChunkCorrupted, ManifestCorrupted
from nodes.manifest import Manifest
from nodes.patches import Patch, apply, read_chunks

CHUNK = 64 * 1024
CODEC = ChunkCodec(bytes(range(32)))


def _blob(rng: random.Random, n: int = CHUNK) -> bytes:
    return rng.randbytes(n)


def test_select_then_apply_rebuilds_the_chunk_including_a_short_last_block() -> None:
    rng = random.Random(1)
    length = 3 * BLOCK + 100
    old, new = _blob(rng, length), bytearray(_blob(rng, length))
    mask = 0b1010  # block 1 and the short block 3
    expected = bytearray(old)
    expected[BLOCK : 2 * BLOCK] = new[BLOCK : 2 * BLOCK]
    expected[3 * BLOCK :] = new[3 * BLOCK :]
    blocks = pick_blocks(bytes(new), mask)
    assert len(blocks) == BLOCK + 100
    assert apply(old, blocks, mask, length) == bytes(expected)


def test_apply_on_no_base_starts_from_zeros() -> None:
    blocks = b"\x07" * BLOCK
    out = apply(None, blocks, 0b100, CHUNK)
    assert out[2 * BLOCK : 3 * BLOCK] == blocks
    assert out.count(0) == CHUNK - BLOCK


@pytest.mark.parametrize(
    ("blocks", "mask"),
    [(b"x" * (BLOCK - 1), 1), (b"x" * (2 * BLOCK), 1), (b"x" * BLOCK, 0), (b"", 1 << 16)],
)
def test_apply_refuses_blocks_that_do_not_fit_the_mask(blocks: bytes, mask: int) -> None:
    with pytest.raises(ValueError, match=r"mask|delta"):
        apply(bytes(CHUNK), blocks, mask, CHUNK)


def _manifest(patches: dict[int, Patch] | None = None) -> Manifest:
    entries = ((0, b"a" * 32), (2, b"b" * 32), (5, b"c" * 32))
    return Manifest(
        "s1", "vm", "root", 5 * CHUNK + 3 * BLOCK + 100, CHUNK, None, entries, patches or {}
    )


def test_a_manifest_without_patches_keeps_format_1_bytes_and_root() -> None:
    manifest = _manifest()
    body = cbor2.loads(manifest.encode())
    assert body["format"] == 1 and "patches" not in body
    leaves = [manifest.header()] + [i.to_bytes(8, "big") + c for i, c in manifest.entries]
    assert manifest.root() == merkle_root(leaves)


def test_a_patched_manifest_round_trips_and_its_root_covers_every_patch_field() -> None:
    patched = _manifest({2: Patch(b"d" * 32, b"e" * 32, 0b11), 5: Patch(None, b"f" * 32, 1)})
    assert cbor2.loads(patched.encode())["format"] == 2
    assert Manifest.decode(patched.encode()) == patched
    roots = {
        patched.root(),
        _manifest().root(),
        _manifest({2: Patch(b"d" * 32, b"e" * 32, 0b111), 5: Patch(None, b"f" * 32, 1)}).root(),
        _manifest({2: Patch(b"x" * 32, b"e" * 32, 0b11), 5: Patch(None, b"f" * 32, 1)}).root(),
        _manifest({2: Patch(b"d" * 32, b"y" * 32, 0b11), 5: Patch(None, b"f" * 32, 1)}).root(),
        _manifest({2: Patch(b"d" * 32, b"e" * 32, 0b11), 5: Patch(b"z" * 32, b"f" * 32, 1)}).root(),
    }
    assert len(roots) == 6


def test_stored_ids_are_bases_and_deltas_not_the_patched_content_ids() -> None:
    manifest = _manifest({2: Patch(b"d" * 32, b"e" * 32, 0b11), 5: Patch(None, b"f" * 32, 1)})
    assert manifest.chunk_ids() == {b"a" * 32, b"d" * 32, b"e" * 32, b"f" * 32}


@pytest.mark.parametrize(
    "patch",
    [
        [1, b"", b"e" * 32, 1],  # no entry at index 1
        [2, b"", b"e" * 31, 1],  # short delta id
        [2, b"d" * 5, b"e" * 32, 1],  # short base id
        [2, b"", b"e" * 32, 0],  # empty mask
        [2, b"", b"e" * 32, 1 << 16],  # past the chunk's 16 blocks
        [5, b"", b"e" * 32, 1 << 4],  # past the short last chunk's 4 blocks
    ],
)
def test_a_malformed_patch_is_refused(patch: list[object]) -> None:
    body = cbor2.loads(_manifest().encode())
    body["format"], body["patches"] = 2, [patch]
    with pytest.raises(ManifestCorrupted):
        Manifest.decode(cbor2.dumps(body, canonical=True))


def test_a_format_that_disagrees_with_the_patches_is_refused() -> None:
    body = cbor2.loads(_manifest().encode())
    body["patches"] = [[2, b"", b"e" * 32, 1]]
    with pytest.raises(ManifestCorrupted, match="format"):
        Manifest.decode(cbor2.dumps(body, canonical=True))
    body = cbor2.loads(_manifest().encode())
    body["format"] = 2
    with pytest.raises(ManifestCorrupted, match="format"):
        Manifest.decode(cbor2.dumps(body, canonical=True))


def test_a_child_drops_the_patch_of_an_index_changed_plainly_and_keeps_the_rest() -> None:
    parent = _manifest({2: Patch(b"d" * 32, b"e" * 32, 1), 5: Patch(None, b"f" * 32, 1)})
    child = parent.changed("s2", {2: b"g" * 32, 0: b"h" * 32}, {0: Patch(b"a" * 32, b"i" * 32, 4)})
    assert child.patches == {0: Patch(b"a" * 32, b"i" * 32, 4), 5: Patch(None, b"f" * 32, 1)}
    assert child.chunk_map == {0: b"h" * 32, 2: b"g" * 32, 5: b"c" * 32}
    assert child.parent == "s1"


class Store:
    """Stored forms by id, in memory: what `read_chunks` fetches with."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def put(self, plain: bytes) -> bytes:
        cid = CODEC.chunk_id(plain)
        self.blobs[cid] = CODEC.encode(plain, cid)
        return cid

    async def get(self, ids: list[bytes]) -> dict[bytes, bytes]:
        return {i: self.blobs[i] for i in ids}


def test_read_chunks_rebuilds_patched_chunks_and_checks_them_against_their_ids() -> None:
    rng = random.Random(2)
    store = Store()
    base = _blob(rng)
    base_id = store.put(base)
    new = bytearray(base)
    new[BLOCK * 3 : BLOCK * 4] = _blob(rng, BLOCK)
    delta = store.put(pick_blocks(bytes(new), 1 << 3))
    holey = bytearray(CHUNK)
    holey[0:BLOCK] = b"\x01" * BLOCK
    hole_delta = store.put(bytes(holey[:BLOCK]))
    wanted = [
        (base_id, None, CHUNK),
        (CODEC.chunk_id(bytes(new)), Patch(base_id, delta, 1 << 3), CHUNK),
        (CODEC.chunk_id(bytes(holey)), Patch(None, hole_delta, 1), CHUNK),
    ]
    got = asyncio.run(read_chunks(store.get, CODEC, wanted))
    assert got == [base, bytes(new), bytes(holey)]
    wrong = [(base_id, Patch(base_id, delta, 1 << 3), CHUNK)]
    with pytest.raises(ChunkCorrupted, match="does not match its id"):
        asyncio.run(read_chunks(store.get, CODEC, wrong))
    misfit = [(base_id, Patch(base_id, delta, 0b11 << 3), CHUNK)]
    with pytest.raises(ChunkCorrupted, match="does not apply"):
        asyncio.run(read_chunks(store.get, CODEC, misfit))

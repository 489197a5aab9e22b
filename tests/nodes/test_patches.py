"""Patched chunks and format-2 and -3 manifests: rebuilding, checking, encoding and roots."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import cbor2
import pytest

from ledger.merkle import merkle_root
from nodes.block_masks import BLOCK, pick_blocks
from nodes.chunks import ChunkCodec
from nodes.errors import ChunkCorrupted, ManifestCorrupted
from nodes.manifest import Manifest
from nodes.mirror import Mirror, MirrorMeta
from nodes.patches import MAX_LAYERS, Patch, apply, read_chunks

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


LAYERED = Patch(b"d" * 32, b"g" * 32, 0b100, ((b"e" * 32, 0b11),))


def test_a_layered_patch_makes_format_3_round_trips_and_its_root_covers_every_layer() -> None:
    layered = _manifest({2: LAYERED, 5: Patch(None, b"f" * 32, 1)})
    body = cbor2.loads(layered.encode())
    assert body["format"] == 3
    assert body["patches"][0] == [2, b"d" * 32, b"e" * 32, 0b11, b"g" * 32, 0b100]
    assert Manifest.decode(layered.encode()) == layered
    assert layered.chunk_ids() == {b"a" * 32, b"d" * 32, b"e" * 32, b"f" * 32, b"g" * 32}
    variants = [
        Patch(b"d" * 32, b"g" * 32, 0b100, ((b"x" * 32, 0b11),)),  # another lower delta
        Patch(b"d" * 32, b"g" * 32, 0b100, ((b"e" * 32, 0b10),)),  # another lower mask
        Patch(b"d" * 32, b"g" * 32, 0b100),  # no lower layer
        Patch(b"d" * 32, b"e" * 32, 0b11, ((b"g" * 32, 0b100),)),  # layers swapped
    ]
    roots = {layered.root()} | {
        _manifest({2: v, 5: Patch(None, b"f" * 32, 1)}).root() for v in variants
    }
    assert len(roots) == 1 + len(variants)


def test_a_patch_deeper_than_the_limit_or_with_a_bad_layer_is_refused() -> None:
    deep = Patch(b"d" * 32, b"g" * 32, 1, tuple((bytes([n]) * 32, 1) for n in range(MAX_LAYERS)))
    for patch in (
        deep,
        Patch(b"d" * 32, b"g" * 32, 1, ((b"e" * 31, 1),)),
        Patch(b"d" * 32, b"g" * 32, 1, ((b"e" * 32, 0),)),
    ):
        with pytest.raises(ManifestCorrupted, match="bad patch"):
            Manifest.decode(_manifest({2: patch}).encode())
    body = cbor2.loads(_manifest({2: LAYERED}).encode())
    body["patches"] = [[2, b"d" * 32, b"e" * 32, 0b11, b"g" * 32]]  # a delta without a mask
    with pytest.raises(ManifestCorrupted):
        Manifest.decode(cbor2.dumps(body, canonical=True))
    body["patches"], body["format"] = [LAYERED.row(2)], 2  # layers under format 2
    with pytest.raises(ManifestCorrupted, match="format"):
        Manifest.decode(cbor2.dumps(body, canonical=True))


def test_read_chunks_lays_each_layer_over_the_base_in_order() -> None:
    rng = random.Random(3)
    store = Store()
    base = _blob(rng)
    first, second = bytearray(base), bytearray(base)
    first[0 : 2 * BLOCK] = _blob(rng, 2 * BLOCK)  # blocks 0 and 1
    second[:] = first
    second[BLOCK : 2 * BLOCK] = _blob(rng, BLOCK)  # block 1 again, over the first layer
    second[5 * BLOCK : 6 * BLOCK] = _blob(rng, BLOCK)  # and block 5
    lower = store.put(pick_blocks(bytes(first), 0b11))
    upper = store.put(pick_blocks(bytes(second), 0b100010))
    patch = Patch(store.put(base), upper, 0b100010, ((lower, 0b11),))
    wanted = [(CODEC.chunk_id(bytes(second)), patch, CHUNK)]
    assert asyncio.run(read_chunks(store.get, CODEC, wanted)) == [bytes(second)]
    swapped = Patch(patch.base, lower, 0b11, ((upper, 0b100010),))
    with pytest.raises(ChunkCorrupted, match="does not match its id"):
        asyncio.run(read_chunks(store.get, CODEC, [(wanted[0][0], swapped, CHUNK)]))


def test_a_mirror_keeps_layered_and_single_patches_across_a_reopen(tmp_path: Path) -> None:
    """The base map a fast rollback's mirror writes on its backup node, read back on restart.

    No cluster is needed to write and reopen it: None stands in, and is never called.
    """
    meta = MirrorMeta("ab" * 32, "vm", "root", 3 * CHUNK, CHUNK, "cd" * 32)
    base = {0: b"a" * 32, 1: b"b" * 32, 2: b"c" * 32}
    patches = {1: LAYERED, 2: Patch(None, b"f" * 32, 1)}
    Mirror.create(tmp_path, meta, base, None, CODEC, patches=patches)  # type: ignore[arg-type]
    reopened = Mirror.open(tmp_path, None, CODEC)  # type: ignore[arg-type]
    assert (reopened.base, reopened.patches) == (base, patches)
    assert reopened.stored_ids() == {b"a" * 32, b"d" * 32, b"e" * 32, b"f" * 32, b"g" * 32}

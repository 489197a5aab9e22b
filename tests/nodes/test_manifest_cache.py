"""The transfer node's manifest cache: bounded by entries, least recently used out first."""

from __future__ import annotations

from nodes.manifest import Manifest
from nodes.manifest_store import ManifestCache


def _manifest(name: str, entries: int) -> Manifest:
    ids = tuple((i, bytes([i % 256]) * 32) for i in range(entries))
    return Manifest(name, "vm", "root", entries * 65536, 65536, None, ids)


def test_the_least_recently_used_manifest_leaves_first_once_the_entries_pass_the_limit() -> None:
    cache = ManifestCache(limit=10)
    a, b, c = _manifest("a", 4), _manifest("b", 4), _manifest("c", 4)
    cache.put(b"a", a)
    cache.put(b"b", b)
    assert cache.get(b"a") is a  # now the most recently used
    cache.put(b"c", c)
    assert cache.get(b"b") is None
    assert cache.get(b"a") is a and cache.get(b"c") is c


def test_a_manifest_larger_than_the_whole_cache_is_not_kept() -> None:
    cache = ManifestCache(limit=10)
    small = _manifest("small", 3)
    cache.put(b"small", small)
    cache.put(b"big", _manifest("big", 11))
    assert cache.get(b"big") is None
    assert cache.get(b"small") is small

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from ledger.statedb import StateStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "evm-state.sqlite"


def test_new_store_is_empty(path: Path) -> None:
    with closing(StateStore(path)) as store:
        assert store.empty
        assert len(store) == 0
        assert not store.exists(b"key")


def test_checkpointed_writes_survive_a_reopen(path: Path) -> None:
    with closing(StateStore(path)) as store:
        store[b"a"] = b"1"
        store[b"b"] = b"2"
        store.checkpoint()

    with closing(StateStore(path)) as reopened:
        assert dict(zip(reopened, (reopened[k] for k in reopened), strict=True)) == {
            b"a": b"1",
            b"b": b"2",
        }
        assert not reopened.empty


def test_writes_after_the_last_checkpoint_are_lost_on_reopen(path: Path) -> None:
    with closing(StateStore(path)) as store:
        store[b"kept"] = b"1"
        store.checkpoint()
        store[b"lost"] = b"2"
        store[b"kept"] = b"changed"
        assert store[b"lost"] == b"2"

    with closing(StateStore(path)) as reopened:
        assert reopened[b"kept"] == b"1"
        assert not reopened.exists(b"lost")


def test_deletion_is_checkpointed_like_a_write(path: Path) -> None:
    with closing(StateStore(path)) as store:
        store[b"gone"] = b"1"
        store[b"stays"] = b"2"
        store.checkpoint()
        del store[b"gone"]
        assert not store.exists(b"gone")
        store.checkpoint()

    with closing(StateStore(path)) as reopened:
        assert not reopened.exists(b"gone")
        assert reopened[b"stays"] == b"2"


def test_discard_returns_to_the_last_checkpoint(path: Path) -> None:
    with closing(StateStore(path)) as store:
        store[b"a"] = b"1"
        store.checkpoint()
        store[b"a"] = b"2"
        store[b"b"] = b"3"
        del store[b"a"]

        store.discard()

        assert store[b"a"] == b"1"
        assert not store.exists(b"b")
        store.checkpoint()
    with closing(StateStore(path)) as reopened:
        assert reopened[b"a"] == b"1"
        assert len(reopened) == 1


def test_missing_key_raises_key_error(path: Path) -> None:
    with closing(StateStore(path)) as store, pytest.raises(KeyError):
        store[b"absent"]

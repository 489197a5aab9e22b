"""The key files, [nbd] and [wire] settings as the configuration reads them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eth_account import Account

from ledger.errors import ConfigError
from nodes.config import MAX_BASE_PORT, MAX_FIXED_NODES, MIN_FRAME, load_config
from nodes.deployment import init_deployment
from nodes.pipeline import READ_CALL
from nodes.replication import _batches as replication_batches
from nodes.wire import encode_frame


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_new_deployment_gives_each_key_its_part_and_funds_all_three(tmp_path: Path) -> None:
    created = init_deployment(tmp_path)

    settings = created.config.ledger_settings()

    assert settings.admin_key and settings.deleter_key
    keys = (settings.admin_key, settings.operator_key, settings.deleter_key)
    addresses = [Account.from_key(bytes.fromhex(k)).address for k in keys]
    assert addresses == [created.admin, created.operator, created.deleter]
    assert settings.chain.funded == tuple(addresses)


def test_a_one_key_deployment_reads_as_before(tmp_path: Path) -> None:
    created = init_deployment(tmp_path)
    config = created.config.path
    for line in ('admin_key_file = "admin.key"', 'deleter_key_file = "deleter.key"'):
        rewrite(config, line, "")
    text = config.read_text()
    funded = next(line for line in text.splitlines() if line.startswith("funded = "))
    rewrite(config, funded, "")

    settings = load_config(config, {}).ledger_settings()

    assert (settings.admin_key, settings.deleter_key) == (None, None)
    assert settings.chain.funded == (created.operator,)


def test_a_key_file_that_is_not_here_reads_as_not_held(tmp_path: Path) -> None:
    created = init_deployment(tmp_path)
    (tmp_path / "deleter.key").unlink()
    (tmp_path / "admin.key").unlink()

    settings = load_config(created.config.path, {}).ledger_settings()

    assert (settings.admin_key, settings.deleter_key) == ("", "")
    assert len(settings.chain.funded) == 3, "the genesis does not depend on which keys are here"


def test_a_funded_entry_that_is_not_an_address_is_a_configuration_error(tmp_path: Path) -> None:
    created = init_deployment(tmp_path)
    text = created.config.path.read_text()
    funded = next(line for line in text.splitlines() if line.startswith("funded = "))
    rewrite(created.config.path, funded, 'funded = "0x12,nope"')

    with pytest.raises(ConfigError) as caught:
        load_config(created.config.path, {}).ledger_settings()

    assert caught.value.message == "configuration chain.funded: '0x12' is not an account address"


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ('tls_cert = "c.pem"', "configuration [nbd]: tls_cert and tls_key go together"),
        ('tls_key = "k.pem"', "configuration [nbd]: tls_cert and tls_key go together"),
        ('tls_ca = "ca.pem"', "configuration nbd.tls_ca: requires tls_cert and tls_key"),
        ("allow_plaintext = 1", "configuration nbd.allow_plaintext: expected bool, got 1"),
    ],
)
def test_incomplete_nbd_tls_settings_are_one_configuration_error(
    tmp_path: Path, settings: str, problem: str
) -> None:
    created = init_deployment(tmp_path)
    key = settings.split(" = ")[0]
    text = created.config.path.read_text()
    default = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
    rewrite(created.config.path, default, settings)

    with pytest.raises(ConfigError) as caught:
        load_config(created.config.path, {})

    assert caught.value.message == problem


def test_nbd_listens_on_loopback_by_default(tmp_path: Path) -> None:
    config = init_deployment(tmp_path).config

    assert config.nbd.host == "127.0.0.1"
    assert config.nbd_tls() is None


def test_a_frame_limit_below_the_largest_chunk_batches_is_refused(tmp_path: Path) -> None:
    created = init_deployment(tmp_path)
    rewrite(created.config.path, "max_frame = 16777216", "max_frame = 1048576")

    with pytest.raises(ConfigError) as caught:
        load_config(created.config.path, {})

    assert caught.value.message == (
        f"configuration wire.max_frame: must be {MIN_FRAME} to {2**32 - 1} bytes"
    )


def test_the_smallest_frame_limit_carries_the_largest_chunk_batches() -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(READ_CALL)]
    answer = {"id": 1, "result": {"chunks": chunks, "bytes": len(chunks) * 64 * 1024}}
    assert len(encode_frame(answer, MIN_FRAME)) > 1024 * 1024
    items = [[os.urandom(32), os.urandom(64 * 1024 + 29)] for _ in range(40)]
    for batch in replication_batches(items):
        request = {"id": 2, "op": "chunk.put_many", "args": {"items": batch, "sync": False}}
        encode_frame(request, MIN_FRAME)


def test_a_fixed_base_port_keeps_every_port_of_the_topology_below_65536(tmp_path: Path) -> None:
    created = init_deployment(tmp_path)
    rewrite(created.config.path, "base_port = 0", f"base_port = {MAX_BASE_PORT}")
    config = load_config(created.config.path, {})
    assert config.network.base_port + 100 + MAX_FIXED_NODES == 65535, "business-9's NBD port"

    rewrite(created.config.path, f"base_port = {MAX_BASE_PORT}", f"base_port = {MAX_BASE_PORT + 1}")
    with pytest.raises(ConfigError, match=r"network\.base_port"):
        load_config(created.config.path, {})


def test_a_fixed_base_port_allows_at_most_nine_nodes_of_a_role(tmp_path: Path) -> None:
    created = init_deployment(tmp_path)
    rewrite(created.config.path, "backup = 3", "backup = 10")
    assert load_config(created.config.path, {}).topology.backup == 10, "free ports: no limit"

    rewrite(created.config.path, "base_port = 0", "base_port = 20000")
    with pytest.raises(ConfigError) as caught:
        load_config(created.config.path, {})
    assert caught.value.message == (
        "configuration topology.backup: at most 9 nodes while network.base_port fixes the ports"
    )

from __future__ import annotations

import pytest

from ledger.chain import ChainSettings, open_chain
from ledger.errors import ConfigError


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        pytest.param(ChainSettings(backend="eth-tester"), "chain.data_dir", id="no-data-dir"),
        pytest.param(ChainSettings(backend="rpc"), "chain.rpc_url", id="no-rpc-url"),
        pytest.param(ChainSettings(backend="ganache"), "chain.backend", id="unknown-backend"),
    ],
)
def test_incomplete_chain_settings_are_a_config_error(settings: ChainSettings, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_chain(settings)

    assert caught.value.message.startswith(f"configuration {where}: ")
    assert caught.value.exit_code == 2


def test_unknown_backend_error_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        open_chain(ChainSettings(backend="ganache"))

    assert "'eth-tester'" in caught.value.message
    assert "'rpc'" in caught.value.message

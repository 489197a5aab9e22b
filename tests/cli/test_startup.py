"""The command line starts without loading the chain, the EVM or the database layer."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("web3", "sqlalchemy", "eth_account", "eth_tester", "eth", "vyper", "eth_utils")


def test_importing_the_cli_loads_none_of_the_controllers_heavy_dependencies() -> None:
    probe = f"import sys, cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""

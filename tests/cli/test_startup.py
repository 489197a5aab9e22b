"""The command line starts without loading the chain, the EVM or the database layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("web3", "sqlalchemy", "eth_account", "eth_tester", "eth", "vyper", "eth_utils")


def test_importing_the_cli_loads_none_of_the_controllers_heavy_dependencies() -> None:
    probe = f"import sys, cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""


def test_running_a_command_loads_none_of_them_nor_pydantic(tmp_path: Path) -> None:
    """Parsing a command's parameters imports no pydantic: that alone costs about 0.1 s."""
    heavy = (*HEAVY, "pydantic")
    argv = ["vmsnap", "--config", str(tmp_path / "none.toml"), "snapshot", "show", "ab", "--json"]
    probe = (
        f"import json, runpy, sys; sys.argv = {argv!r}\n"
        "try:\n    runpy.run_module('cli', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code\n"
        f"print(json.dumps([code, [m for m in {heavy!r} if m in sys.modules]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    code, loaded = json.loads(done.stdout.splitlines()[-1])
    assert code not in (0, None) and "none.toml" in done.stderr, "it stopped at the config"
    assert loaded == []

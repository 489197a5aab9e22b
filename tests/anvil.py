"""anvil, a real Ethereum JSON-RPC node, started for tests on a loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from tests.tools import require

ROOT = Path(__file__).resolve().parents[1]
# anvil's first development account, funded on every fresh anvil chain.
ANVIL_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def _anvil() -> str | None:
    local = ROOT / ".tools" / "node_modules" / ".bin" / "anvil"
    return str(local) if local.exists() else shutil.which("anvil")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_anvil() -> Iterator[str]:
    """A fresh anvil chain; yields its JSON-RPC URL."""
    binary = require("anvil", "make tools installs npm package @foundry-rs/anvil", _anvil())
    port = free_port()
    process = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def fund(url: str, *addresses: str, wei: int = 10**21) -> None:
    """Give each address `wei` (1,000 ether unless told) on the anvil node at `url`."""
    node = Web3(HTTPProvider(url)).provider
    for address in addresses:
        node.make_request(RPCEndpoint("anvil_setBalance"), [address, hex(wei)])

"""Fixtures shared by every test package."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.anvil import running_anvil
from tests.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (started on first use)."""
    folder = Path(tempfile.mkdtemp(prefix="vmsnap-pg-"))
    folder.chmod(0o755)  # the server's own user must reach its folder inside
    server = PostgresServer(folder / "server")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def anvil() -> Iterator[str]:
    """An anvil node for the session (started on first use); its JSON-RPC URL."""
    with running_anvil() as url:
        yield url

"""A real PostgreSQL server for tests: initdb and pg_ctl in a temporary folder, on loopback.

The server runs as the `postgres` user when the tests run as root (initdb refuses root),
listens on 127.0.0.1 on a free port, and is stopped at the end of the session. Durability
settings are relaxed (`fsync=off`) because the folder is thrown away; everything else is a
stock PostgreSQL server.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
from pathlib import Path

import psycopg

from tests.tools import require

_names = itertools.count(1)


def binary(name: str) -> str:
    """A PostgreSQL server binary from the PATH or Debian's versioned folder (else skip/fail)."""
    versioned = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    found = shutil.which(name) or (str(versioned[0]) if versioned else None)
    return require(name, "Debian package postgresql", found)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One server; `database()` makes a fresh, empty database and returns its URL."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.data = folder / "data"
        folder.mkdir(parents=True, exist_ok=True)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(folder, "postgres", "postgres")
        self._run(
            binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        )
        options = (
            f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(folder / "log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")

    def database(self) -> str:
        """A new database; its SQLAlchemy URL."""
        name = f"vmsnap_test_{next(_names)}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server."""
        self._run(binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from typer.testing import CliRunner, Result

from cli.main import app
from nodes.chunks import ChunkCodec
from nodes.config import load_config


@dataclass
class Deployment:
    """A deployment folder and a runner bound to its config."""

    root: Path
    runner: CliRunner

    @property
    def config(self) -> Path:
        return self.root / "vmsnap.toml"

    def run(self, *args: str) -> Result:
        return self.runner.invoke(app, ["--config", str(self.config), *args])

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def codec(self) -> ChunkCodec:
        """The deployment's chunk codec: keyed and encrypting when its config says so."""
        config = load_config(self.config, {})
        return ChunkCodec(config.data_key(), config.storage.compression_level)

    def account(self, role: str) -> str:
        """The address of the deployment's `role` key (admin, operator or deleter)."""
        key = (self.root / f"{role}.key").read_text().strip()
        return str(Account.from_key(bytes.fromhex(key)).address)


def make_deployment(root: Path, *init_args: str) -> Deployment:
    runner = CliRunner()
    result = runner.invoke(app, ["init", "--dir", str(root), "--name", "test", *init_args])
    assert result.exit_code == 0, result.output
    return Deployment(root, runner)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return make_deployment(tmp_path / "deployment")


@contextlib.contextmanager
def running(root: Path, *init_args: str) -> Iterator[Deployment]:
    """A new deployment at `root` with its network up; it goes down afterwards."""
    deployment = make_deployment(root, *init_args)
    deployment.ok("up")
    try:
        yield deployment
    finally:
        deployment.run("down")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A deployment with its network running for the whole module."""
    with running(tmp_path_factory.mktemp("net") / "deployment") as deployment:
        yield deployment

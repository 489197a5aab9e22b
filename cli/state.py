"""What every command shares: where the configuration is, loaded once on first use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import typer

from nodes.config import Config, find_config, load_config


@dataclass
class AppState:
    """The --config option and the environment, and the config they lead to."""

    config_path: Path | None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _config: Config | None = None

    def config(self) -> Config:
        """Find and read the configuration."""
        if self._config is None:
            path = find_config(self.config_path, self.env, Path.cwd())
            self._config = load_config(path, self.env)
        return self._config


def state(ctx: typer.Context) -> AppState:
    """The shared state of this invocation."""
    root = ctx.find_root()
    assert isinstance(root.obj, AppState)
    return root.obj

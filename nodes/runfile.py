"""Run files: how a running node tells the others where it listens."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunFile:
    """What a running node publishes in ``data/run/NAME.json`` so others can find it."""

    name: str
    role: str
    pid: int
    host: str
    port: int
    started_at: float
    nbd_port: int = 0
    view_port: int = 0

    @classmethod
    def read(cls, path: Path) -> RunFile | None:
        """Return the run file at `path`, or None if absent or unreadable."""
        try:
            body: dict[str, Any] = json.loads(path.read_text())
            return cls(**body)
        except (OSError, ValueError, TypeError):
            return None

    def write(self, folder: Path) -> Path:
        """Publish atomically into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as out:
            json.dump(self.__dict__, out)
        path = folder / f"{self.name}.json"
        Path(tmp).replace(path)
        return path


def process_alive(pid: int) -> bool:
    """True when process `pid` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with Path(f"/proc/{pid}/stat").open() as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False

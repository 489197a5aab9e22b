"""Node processes of a test network: their run files, and killing them like a crash."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from nodes.runfile import process_alive


def runfile(root: Path, node: str) -> dict[str, Any]:
    """The run file of `node` in the deployment at `root`."""
    return dict(json.loads((root / "data" / "run" / f"{node}.json").read_text()))


def kill_node(root: Path, node: str, forget: bool = False) -> None:
    """SIGKILL `node` and wait until it is gone; `forget` also drops its run file."""
    pid = int(runfile(root, node)["pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid):
            break
        time.sleep(0.02)
    if forget:
        (root / "data" / "run" / f"{node}.json").unlink(missing_ok=True)

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


def alter_stored_copies(root: Path, chunk_id: bytes, at: int = 2, flip: int = 0xFF) -> int:
    """Flip bits of byte `at` of the stored form of `chunk_id` in every backup node's packs.

    Returns how many copies were altered (a pack record starts ``VCR1 | id | length | id``).
    """
    altered = 0
    for pack in (root / "data" / "nodes").glob("backup-*/chunks/packs/*.pack"):
        data = bytearray(pack.read_bytes())
        found = data.find(b"VCR1" + chunk_id)
        if found >= 0:
            data[found + 4 + 32 + 4 + 32 + at] ^= flip
            pack.write_bytes(bytes(data))
            altered += 1
    return altered

"""How much of a file the kernel holds in its page cache, measured with util-linux's fincore."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def cached_bytes(path: Path) -> int:
    """Bytes of `path` resident in the page cache; skips (fails in CI) without fincore."""
    if shutil.which("fincore") is None:
        if os.environ.get("CI"):
            pytest.fail("fincore (util-linux) is missing")
        pytest.skip("fincore (util-linux) is not installed")
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip())

"""External tools the tests drive: skipped locally without them, a failure in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require(name: str, package: str, path: str | None = None) -> str:
    """The path of tool `name` (or `path` if given and found); skip, or fail when CI=true."""
    found = path or shutil.which(name)
    if found is None:
        message = f"{name} is not installed ({package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: .ci/run installs it")
        pytest.skip(message)
    return found

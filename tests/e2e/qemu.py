"""The real NBD clients from qemu-utils, for tests: skip locally without them, fail in CI."""

from __future__ import annotations

import subprocess

from tests.tools import require


def tool(name: str) -> str:
    """The path of a qemu-utils tool, or skip (fail in CI) when it is missing."""
    return require(name, "Debian package qemu-utils")


def qemu_io(url: str, *commands: str) -> subprocess.CompletedProcess[str]:
    """Run qemu-io against an NBD URL; fail the test on a non-zero exit or a bad pattern."""
    args = [tool("qemu-io"), "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pattern verification failed" not in done.stdout, done.stdout
    return done


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    """Run qemu-img; fail the test on a non-zero exit."""
    done = subprocess.run(
        [tool("qemu-img"), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done

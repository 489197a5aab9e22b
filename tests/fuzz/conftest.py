"""Fixtures of the fuzzing suite, and the table of examples run printed after the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cli.conftest import Deployment, make_deployment
from tests.fuzz.tally import RAN, scale

FUZZ_VM = "fuzz-vm"
FUZZ_DISK = "fuzz-disk"
FUZZ_DISK_SIZE = 256 * 1024


@pytest.fixture(scope="package")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A running local network with ledger replicas and one VM whose disk is served.

    Shared by the whole package: every fuzz target that needs real node processes
    checks afterwards that they are still up and unchanged by what it sent.
    """
    deployment = make_deployment(tmp_path_factory.mktemp("fuzz-net") / "deployment")
    text = deployment.config.read_text()
    deployment.config.write_text(text.replace("replicas = false", "replicas = true", 1))
    deployment.ok("up")
    try:
        size = f"{FUZZ_DISK_SIZE // 1024}K"
        deployment.ok(
            "vm", "register", FUZZ_VM, "--type", "kvm", "--ip", "10.0.0.9",
            "--disk", f"system:{FUZZ_DISK}:{size}",
        )  # fmt: skip
        deployment.ok("disk", "url", FUZZ_VM, FUZZ_DISK)
        yield deployment
    finally:
        deployment.run("down")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many examples each fuzz target ran."""
    if not RAN:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"fuzz targets (VMSNAP_FUZZ_EXAMPLES={scale()})")
    width = max(len(target) for target in RAN)
    for target, count in sorted(RAN.items()):
        write(f"{target:<{width}}  {count:>7}")
    write(f"{'total':<{width}}  {sum(RAN.values()):>7}")

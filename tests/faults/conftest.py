"""The fault suite's shared network and its summary table at the end of the run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Deployment, make_deployment
from tests.faults.invariants import Invariants
from tests.faults.network import up
from tests.faults.tally import TALLY

WIRE_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A deployment with its network up, shared by a module's cases (each uses its own VMs)."""
    deployment = make_deployment(tmp_path_factory.mktemp("faults") / "deployment")
    patient(deployment)
    up(deployment)
    try:
        yield deployment
    finally:
        deployment.run("down")


def patient(deployment: Deployment) -> None:
    """Let every network wait take `WIRE_TIMEOUT` s: full audits run after each fault."""
    config = deployment.config.read_text()
    wire = config.index("[wire]")
    head, tail = config[:wire], config[wire:]
    tail = re.sub(r"(?m)^timeout = .*$", f"timeout = {WIRE_TIMEOUT}", tail, count=1)
    deployment.config.write_text(head + tail)


@pytest.fixture
def invariants(net: Deployment, tmp_path: Path) -> Invariants:
    """The invariant checker of the module's network, counting into the run's tally."""
    return Invariants(net, TALLY, tmp_path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the fault suite injected and checked in this run (nothing when it did not run)."""
    if not TALLY.faults and not TALLY.checks:
        return
    terminalreporter.write_sep("=", "fault injection summary")
    for line in TALLY.lines():
        terminalreporter.write_line(line)

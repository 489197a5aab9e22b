"""Fuzzing the real ``vmsnap`` entry point with nonsense arguments against a running network.

Arguments are drawn from the real command tree (every command path and its options) mixed
with garbage. A run that fails must say so in exactly one line on stderr, ``error: …``,
with a non-zero exit and no traceback, and must leave the ledger head as it was. The one
exception is a group named without a command: it shows that group's help (exit 2), which
is what the operator asked for. Each run is a real process (about 0.2-3 s here), so the
default count is small; ``VMSNAP_FUZZ_EXAMPLES`` scales it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from hypothesis import example, given
from hypothesis import strategies as st
from typer._click.core import Command
from typer.core import TyperGroup

from cli.main import app
from tests.cli.conftest import Deployment
from tests.fuzz.conftest import FUZZ_DISK, FUZZ_VM
from tests.fuzz.nodes import NetworkClients
from tests.fuzz.tally import fuzz, ran

VMSNAP = str(Path(sys.executable).with_name("vmsnap"))
LEFT_OUT = {"init", "up", "down", "node"}
"""Commands that start, stop or create deployments: their valid forms would end the test."""


def command_tree() -> tuple[dict[tuple[str, ...], list[str]], set[tuple[str, ...]]]:
    """Every command path with its option names, and the paths that are groups."""
    commands: dict[tuple[str, ...], list[str]] = {}
    groups: set[tuple[str, ...]] = set()

    def walk(command: Command, path: tuple[str, ...]) -> None:
        if isinstance(command, TyperGroup):
            groups.add(path)
            for name, sub in command.commands.items():
                if not path and name in LEFT_OUT:
                    continue
                walk(sub, (*path, name))
        else:
            options = [o for p in command.params for o in getattr(p, "opts", []) if o[0] == "-"]
            commands[path] = options

    walk(typer.main.get_command(app), ())
    return commands, groups


COMMANDS, GROUPS = command_tree()
GARBAGE = st.one_of(
    st.sampled_from(["", "-", "--", "-1", "0", "1" * 30, "no-such-vm", "../x", "a:b:c"]),
    st.sampled_from(["system:d:0", "data:x:1Q", "--bogus", "--json", "every 0h", "Nowhere"]),
    st.sampled_from(["\n", "a\nb", "\x1b[31mred", "nan", "1e999", "-0", "deadbeef" * 8]),
    st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8
    ),
)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    """A command path (sometimes cut short or garbage) followed by options and garbage."""
    path = list(draw(st.sampled_from(sorted(COMMANDS))))
    options = COMMANDS[tuple(path)]
    if draw(st.integers(0, 9)) == 0:
        path = [*path[: draw(st.integers(0, len(path)))], draw(GARBAGE)]
    tokens = st.sampled_from(options) | GARBAGE if options else GARBAGE
    return path + draw(st.lists(tokens, max_size=5))


@pytest.fixture(scope="module")
def clients(network: Deployment) -> Iterator[NetworkClients]:
    connected = NetworkClients(network.root)
    try:
        yield connected
    finally:
        connected.close()


def vmsnap(config: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the real entry point as a process."""
    return subprocess.run(
        [VMSNAP, "--config", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"},
    )


def shows_group_help(argv: list[str], done: subprocess.CompletedProcess[str]) -> bool:
    """True when `argv` named a group without a command, which then showed its help."""
    return tuple(argv) in GROUPS and done.returncode == 2 and "Usage:" in done.stdout


@fuzz(15)
@given(argvs())
@example(["vm", "register", "a\nb", "--type", "kvm", "--ip", "1.2.3.4", "--disk", "system:d:1M"])
@example(["schedule", "set", "no-such-vm", "daily 03:00", "--tz", "America"])
@example(["vm"])
def test_nonsense_arguments_fail_in_one_line_and_change_nothing(
    network: Deployment, clients: NetworkClients, tmp_path_factory: pytest.TempPathFactory,
    argv: list[str],
) -> None:  # fmt: skip
    ran("cli: nonsense arguments (processes)")
    before = clients.call("controller", "ledger.head", {})
    done = vmsnap(network.config, argv, tmp_path_factory.mktemp("cwd"))
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    if done.returncode == 0 or shows_group_help(argv, done):
        return
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, done.stderr)
    assert clients.call("controller", "ledger.head", {}) == before, argv


def test_exporting_where_no_file_can_be_made_is_one_line(
    network: Deployment, tmp_path: Path
) -> None:
    out = Path("/proc/vmsnap-export.raw")  # the folder exists, but nothing can be made in it
    done = vmsnap(network.config, ["disk", "export", FUZZ_VM, FUZZ_DISK, str(out)], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: cannot write {out}: "), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr

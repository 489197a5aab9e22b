import asyncio
import gc
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.errors import ConfigError
from nodes.errors import NodeError, VmDriverError
from nodes.vm_driver import (
    CommandDriver,
    NoneDriver,
    QmpDriver,
    VmDriver,
    VmDriverSettings,
    open_driver,
)
from tests.tools import require

VM = "web"
QEMU = "qemu-system-x86_64"


def python_command(code: str, *args: str) -> str:
    """A shlex-safe command template that runs Python code with arguments."""
    return shlex.join([sys.executable, "-c", code, *args])


def write_command(path: Path, text: str) -> str:
    """A command template that writes `text` (which may hold {vm}) to `path`."""
    code = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    return python_command(code, str(path), text)


def is_running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def require_qemu() -> str:
    """Return QEMU's path; skip without it, but fail in CI."""
    return require(QEMU, "Debian package qemu-system-x86")


@pytest.fixture
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a short path: Unix socket paths are limited to 107 bytes."""
    return tmp_path_factory.mktemp("vm")


@dataclass
class Qemu:
    """A real QEMU VM with no disk, sitting in its BIOS, and a driver for its QMP socket."""

    driver: QmpDriver
    socket: Path
    process: subprocess.Popen[bytes]


def wait_for_socket(process: subprocess.Popen[bytes], path: Path, log: Path) -> None:
    """Wait until QEMU has created its QMP socket."""
    deadline = time.monotonic() + 30
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"{QEMU} exited with {process.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{QEMU} created no QMP socket within 30 s: {log.read_text()}")
        time.sleep(0.02)


@pytest.fixture
def qemu(short_dir: Path) -> Iterator[Qemu]:
    binary = require_qemu()
    path, log = short_dir / f"{VM}.qmp", short_dir / "qemu.log"
    argv = [binary, "-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none"]
    argv += ["-m", "32", "-qmp", f"unix:{path},server=on,wait=off"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for_socket(process, path, log)
        yield Qemu(QmpDriver(str(short_dir / "{vm}.qmp"), timeout=10), path, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# The VmDriver interface, run against every backend.


@dataclass
class Rig:
    """A driver and a way to see the VM's state: ``paused`` or ``running``, None if unseen."""

    driver: VmDriver
    state: Callable[[], Awaitable[str | None]]


def none_rig() -> Rig:
    async def unseen() -> None:
        return None

    return Rig(NoneDriver(), unseen)


def command_rig(folder: Path) -> Rig:
    state_file = folder / f"{VM}.state"
    stop = write_command(folder / "{vm}.state", "paused")
    start = write_command(folder / "{vm}.state", "running")

    async def state() -> str:
        return state_file.read_text()

    return Rig(CommandDriver(stop, start, timeout=10), state)


def qemu_rig(qemu: Qemu) -> Rig:
    async def state() -> str:
        return await qemu.driver.status(VM)

    return Rig(qemu.driver, state)


@pytest.fixture(params=["none", "command", "qemu"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    if request.param == "none":
        return none_rig()
    if request.param == "command":
        return command_rig(tmp_path)
    return qemu_rig(request.getfixturevalue("qemu"))


def test_stop_and_start_succeed_and_can_be_repeated(rig: Rig) -> None:
    async def scenario() -> None:
        for _ in range(2):
            await rig.driver.stop(VM)
            await rig.driver.stop(VM)
            await rig.driver.start(VM)
            await rig.driver.start(VM)

    asyncio.run(scenario())


def test_stop_pauses_the_vm_and_start_runs_it_again(rig: Rig) -> None:
    async def scenario() -> list[str | None]:
        seen = []
        await rig.driver.stop(VM)
        seen.append(await rig.state())
        await rig.driver.start(VM)
        seen.append(await rig.state())
        return seen

    seen = asyncio.run(scenario())
    assert seen in (["paused", "running"], [None, None])


# The factory.


def test_factory_builds_each_driver_by_name(tmp_path: Path) -> None:
    assert isinstance(open_driver(VmDriverSettings()), NoneDriver)
    command = VmDriverSettings(kind="command", stop_command="virsh destroy {vm}")
    assert isinstance(open_driver(command), CommandDriver)
    qemu = VmDriverSettings(kind="qemu", qmp_socket=str(tmp_path / "{vm}.qmp"))
    driver = open_driver(qemu)
    assert isinstance(driver, QmpDriver)
    assert driver.socket_path(VM) == str(tmp_path / "web.qmp")


def test_unknown_kind_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        open_driver(VmDriverSettings(kind="libvirt"))
    assert "vm_driver.kind" in str(caught.value)
    assert "'libvirt'" in str(caught.value)
    assert "none, command, qemu" in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        (VmDriverSettings(kind="qemu"), "vm_driver.qmp_socket"),
        (VmDriverSettings(kind="command", stop_command="virsh 'destroy"), "vm_driver.stop_command"),
        (VmDriverSettings(kind="command", start_command='x "y'), "vm_driver.start_command"),
        (VmDriverSettings(timeout=0), "vm_driver.timeout"),
    ],
)
def test_unusable_settings_are_config_errors(settings: VmDriverSettings, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        open_driver(settings)


def test_vm_driver_error_is_a_node_error() -> None:
    error = VmDriverError(VM, "stop", "it would not")
    assert isinstance(error, NodeError)
    assert error.exit_code == 3
    assert str(error) == "cannot stop VM web: it would not"


# NoneDriver.


def test_none_driver_does_nothing_and_succeeds() -> None:
    driver = NoneDriver()
    asyncio.run(driver.stop("no such vm"))
    asyncio.run(driver.start("no such vm"))


# CommandDriver.


def test_command_driver_runs_the_stop_command_for_the_named_vm(tmp_path: Path) -> None:
    out = tmp_path / "out"
    driver = CommandDriver(write_command(out, "stopped {vm}"), "", timeout=10)
    asyncio.run(driver.stop(VM))
    assert out.read_text() == "stopped web"


def test_vm_name_stays_one_argument_because_no_shell_runs(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    code = "import json, sys, pathlib; pathlib.Path(sys.argv[1]).write_text(json.dumps(sys.argv))"
    driver = CommandDriver("", python_command(code, str(out), "--name={vm}"), timeout=10)
    name = "my vm; touch pwned $(id)"
    asyncio.run(driver.start(name))
    assert json.loads(out.read_text())[1:] == [str(out), f"--name={name}"]


def test_empty_template_runs_nothing_and_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    driver = CommandDriver(write_command(out, "stopped {vm}"), "", timeout=10)
    asyncio.run(driver.start(VM))
    assert not out.exists()


def test_failing_command_reports_exit_code_and_last_stderr_line() -> None:
    code = (
        "import sys\n"
        "print('first', 'line', file=sys.stderr)\n"
        "print('disk busy', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    driver = CommandDriver(python_command(code, "{vm}"), "", timeout=10)
    with pytest.raises(VmDriverError) as caught:
        asyncio.run(driver.stop(VM))
    message = str(caught.value)
    assert message.startswith("cannot stop VM web: ")
    assert message.endswith("exited with 3: disk busy")
    assert "first line" not in message
    assert "\n" not in message


def test_false_reports_its_exit_code() -> None:
    driver = CommandDriver("", "false {vm}", timeout=10)
    with pytest.raises(VmDriverError, match=r"^cannot start VM web: false web exited with 1$"):
        asyncio.run(driver.start(VM))


def test_missing_program_is_a_vm_driver_error(tmp_path: Path) -> None:
    driver = CommandDriver(str(tmp_path / "no-such-program"), "", timeout=10)
    with pytest.raises(VmDriverError, match="no-such-program cannot be run"):
        asyncio.run(driver.stop(VM))


def test_command_past_the_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys, time, pathlib\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "pathlib.Path(sys.argv[1]).write_text(f'{os.getpid()} {child.pid}')\n"
        "time.sleep(60)\n"
    )
    driver = CommandDriver(python_command(code, str(pids)), "", timeout=1.5)
    started = time.monotonic()
    with pytest.raises(VmDriverError, match=r"did not finish within 1\.5 s and was killed"):
        asyncio.run(driver.stop(VM))
    gc.collect()
    assert time.monotonic() - started < 10
    command_pid, sleep_pid = (int(pid) for pid in pids.read_text().split())
    with pytest.raises(ProcessLookupError):
        os.kill(command_pid, 0)
    assert not is_running(sleep_pid)


# QmpDriver.


def test_qemu_stop_pauses_and_start_resets_and_runs(qemu: Qemu) -> None:
    async def scenario() -> list[str]:
        seen = [await qemu.driver.status(VM)]
        await qemu.driver.stop(VM)
        seen.append(await qemu.driver.status(VM))
        await qemu.driver.start(VM)
        seen.append(await qemu.driver.status(VM))
        return seen

    assert asyncio.run(scenario()) == ["running", "paused", "running"]


def test_qmp_error_reply_raises_with_qemus_description(qemu: Qemu) -> None:
    with pytest.raises(VmDriverError) as caught:
        asyncio.run(qemu.driver.execute(VM, "nonexistent"))
    message = str(caught.value)
    assert message.startswith("cannot run QMP nonexistent on VM web: ")
    assert str(qemu.socket) in message
    assert "The command nonexistent has not been found" in message
    assert asyncio.run(qemu.driver.status(VM)) == "running"


def test_busy_qmp_monitor_times_out(qemu: Qemu) -> None:
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        holder.connect(str(qemu.socket))
        holder.settimeout(10)
        assert b"QMP" in holder.recv(4096)
        driver = QmpDriver(str(qemu.socket), timeout=0.5)
        with pytest.raises(VmDriverError, match=r"no greeting within 0\.5 s"):
            asyncio.run(driver.stop(VM))
    finally:
        holder.close()
    assert asyncio.run(qemu.driver.status(VM)) == "running"


def test_missing_qmp_socket_is_named_in_the_error(short_dir: Path) -> None:
    driver = QmpDriver(str(short_dir / "{vm}.qmp"), timeout=5)
    with pytest.raises(VmDriverError) as caught:
        asyncio.run(driver.stop(VM))
    assert str(short_dir / "web.qmp") in str(caught.value)
    assert "No such file or directory" in str(caught.value)


def test_refused_qmp_socket_is_named_in_the_error(short_dir: Path) -> None:
    path = short_dir / f"{VM}.qmp"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    driver = QmpDriver(str(path), timeout=5)
    with pytest.raises(VmDriverError) as caught:
        asyncio.run(driver.start(VM))
    assert str(path) in str(caught.value)
    assert "Connection refused" in str(caught.value)


def test_socket_that_never_greets_times_out(short_dir: Path) -> None:
    path = short_dir / f"{VM}.qmp"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(path))
        silent.listen(1)
        driver = QmpDriver(str(path), timeout=0.3)
        with pytest.raises(VmDriverError, match=r"no greeting within 0\.3 s"):
            asyncio.run(driver.status(VM))

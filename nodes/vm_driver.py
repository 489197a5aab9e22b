"""The VM driver: how vmsnap stops a VM before a rollback and restarts it on its restored disk.

Three backends sit behind :class:`VmDriver`, chosen by name with :func:`open_driver`:
``none`` leaves the VM to the operator, ``command`` runs an operator's commands (for example
``virsh destroy {vm}`` and ``virsh start {vm}``), and ``qemu`` speaks QMP to a running QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ledger.errors import ConfigError
from nodes.errors import VmDriverError

T = TypeVar("T")
VM_PLACEHOLDER = "{vm}"
QMP_LINE_LIMIT = 1 << 20


@dataclass(frozen=True)
class VmDriverSettings:
    """Which VM driver to use and how it reaches the VM; ``{vm}`` stands for the VM's name."""

    kind: str = "none"
    stop_command: str = ""
    start_command: str = ""
    qmp_socket: str = ""
    timeout: float = 30.0


class VmDriver(Protocol):
    """Stops and restarts a VM around a rollback of its disk."""

    async def stop(self, vm: str) -> None:
        """Stop the VM so that it issues no more I/O to its disk."""
        ...

    async def start(self, vm: str) -> None:
        """Restart the VM so that it boots again from its disk."""
        ...


class NoneDriver:
    """Does nothing: the operator stops and starts the VM."""

    async def stop(self, vm: str) -> None:
        """Do nothing; the operator has stopped the VM."""

    async def start(self, vm: str) -> None:
        """Do nothing; the operator will start the VM."""


class CommandDriver:
    """Runs the operator's commands, without a shell, with ``{vm}`` replaced in each argument.

    An empty template means there is nothing to run for that action, which then succeeds:
    a deployment may, for example, only stop its VMs and start them by hand. Each command
    runs in its own process group, which is killed whole when the command outlives the timeout.
    """

    def __init__(self, stop_command: str, start_command: str, timeout: float) -> None:
        self._stop = _parse_template("vm_driver.stop_command", stop_command)
        self._start = _parse_template("vm_driver.start_command", start_command)
        self._timeout = timeout

    async def stop(self, vm: str) -> None:
        """Run the stop command for the VM, if one is configured."""
        await self._run(vm, "stop", self._stop)

    async def start(self, vm: str) -> None:
        """Run the start command for the VM, if one is configured."""
        await self._run(vm, "start", self._start)

    async def _run(self, vm: str, action: str, template: Sequence[str]) -> None:
        """Run one command to completion or kill it; a failure raises VmDriverError."""
        if not template:
            return
        argv = [arg.replace(VM_PLACEHOLDER, vm) for arg in template]
        problem = await _run_command(argv, self._timeout)
        if problem:
            raise VmDriverError(vm, action, problem)


def _parse_template(where: str, template: str) -> tuple[str, ...]:
    """Split a command template into arguments as a POSIX shell would, without running one."""
    try:
        return tuple(shlex.split(template))
    except ValueError as err:
        raise ConfigError(where, f"cannot split {template!r}: {err}") from err


async def _run_command(argv: list[str], timeout: float) -> str:
    """Run a command and return in one line what went wrong, or an empty string on success."""
    command = shlex.join(argv).replace("\n", "\\n")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as err:
        return f"{command} cannot be run: {err.strerror or err}"
    try:
        async with asyncio.timeout(timeout):
            _, stderr = await proc.communicate()
    except TimeoutError:
        return f"{command} did not finish within {timeout:g} s and was killed"
    finally:
        await _reap(proc)
    return _exit_problem(command, proc.returncode, stderr)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill the command's process group if the command is still running, and wait for it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _exit_problem(command: str, returncode: int | None, stderr: bytes) -> str:
    """Describe a failed exit in one line with the last line of stderr; empty on success."""
    if returncode == 0:
        return ""
    if returncode is not None and returncode < 0:
        outcome = f"{command} was killed by signal {-returncode}"
    else:
        outcome = f"{command} exited with {returncode}"
    lines = stderr.decode(errors="replace").strip().splitlines()
    return f"{outcome}: {lines[-1].strip()}" if lines else outcome


class QmpDriver:
    """Drives a QEMU VM through its QMP Unix socket, one connection per call.

    ``stop`` pauses the vCPUs (QEMU drains the VM's block I/O before it answers); ``start``
    resets the machine and resumes it, so the guest boots again from the restored disk.
    QEMU serves one QMP client at a time, so the connection is closed after each call.
    """

    def __init__(self, socket_template: str, timeout: float) -> None:
        self._socket_template = socket_template
        self._timeout = timeout

    def socket_path(self, vm: str) -> str:
        """Return the path of the VM's QMP socket."""
        return self._socket_template.replace(VM_PLACEHOLDER, vm)

    async def stop(self, vm: str) -> None:
        """Pause the VM."""
        await self._run(vm, "stop", ["stop"])

    async def start(self, vm: str) -> None:
        """Reset the VM and let it run, so it boots from its disk."""
        await self._run(vm, "start", ["system_reset", "cont"])

    async def status(self, vm: str) -> str:
        """Return QEMU's run state of the VM, such as ``running`` or ``paused``."""
        reply = await self._run(vm, "read the status of", ["query-status"])
        status = reply.get("status") if isinstance(reply, dict) else None
        if not isinstance(status, str):
            raise VmDriverError(vm, "read the status of", f"query-status gave {reply!r}")
        return status

    async def execute(self, vm: str, command: str) -> Any:
        """Run one QMP command without arguments and return its reply."""
        return await self._run(vm, f"run QMP {command} on", [command])

    async def _run(self, vm: str, action: str, commands: Sequence[str]) -> Any:
        """Run QMP commands in order on one connection and return the last reply."""
        path = self.socket_path(vm)
        try:
            return await self._exchange(path, commands)
        except _QmpFailure as err:
            raise VmDriverError(vm, action, f"QMP socket {path}: {err}") from err
        except OSError as err:
            problem = f"cannot reach QMP socket {path}: {err.strerror or err}"
            raise VmDriverError(vm, action, problem) from err

    async def _exchange(self, path: str, commands: Sequence[str]) -> Any:
        """Open a session, run the commands and close it again."""
        session = await _QmpSession.open(path, self._timeout)
        try:
            reply: Any = None
            for command in commands:
                reply = await session.execute(command)
        finally:
            await session.close()
        return reply


class _QmpFailure(Exception):
    """QEMU refused a command or broke the protocol; QmpDriver turns it into VmDriverError."""


class _QmpSession:
    """One QMP connection whose greeting has been read and capabilities negotiated."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout

    @classmethod
    async def open(cls, path: str, timeout: float) -> _QmpSession:
        """Connect, read QEMU's greeting and leave capabilities negotiation mode."""
        connect = asyncio.open_unix_connection(path, limit=QMP_LINE_LIMIT)
        reader, writer = await _within(timeout, "connect", connect)
        session = cls(reader, writer, timeout)
        try:
            await session._handshake()
        except BaseException:
            await session.close()
            raise
        return session

    async def execute(self, command: str) -> Any:
        """Send a command and return its reply, skipping the events QEMU sends meanwhile."""
        self._writer.write(json.dumps({"execute": command}).encode() + b"\n")
        await _within(self._timeout, f"sending {command}", self._writer.drain())
        return await _within(self._timeout, f"reply to {command}", self._reply(command))

    async def _handshake(self) -> None:
        """Read the greeting and negotiate no optional capabilities."""
        greeting = await _within(self._timeout, "greeting", self._message())
        if "QMP" not in greeting:
            raise _QmpFailure(f"expected a QMP greeting, got {greeting!r}")
        await self.execute("qmp_capabilities")

    async def close(self) -> None:
        """Close the connection, so that QEMU accepts its next client."""
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await _within(self._timeout, "close", self._writer.wait_closed())

    async def _reply(self, command: str) -> Any:
        """Read messages until the command's return or error."""
        while True:
            message = await self._message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                error = message["error"]
                desc = error.get("desc", error) if isinstance(error, dict) else error
                raise _QmpFailure(f"{command} failed: {desc}")
            if "event" not in message:
                raise _QmpFailure(f"unexpected reply to {command}: {message!r}")

    async def _message(self) -> dict[str, Any]:
        """Read one JSON object from its line."""
        try:
            line = await self._reader.readline()
            message = json.loads(line) if line else None
        except ValueError as err:
            raise _QmpFailure(f"malformed QMP message: {err}") from err
        if message is None:
            raise _QmpFailure("QEMU closed the connection")
        if not isinstance(message, dict):
            raise _QmpFailure(f"malformed QMP message: {message!r}")
        return message


async def _within(seconds: float, what: str, awaitable: Awaitable[T]) -> T:
    """Await with a deadline; running out of time raises _QmpFailure naming the wait."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError as err:
        raise _QmpFailure(f"no {what} within {seconds:g} s") from err


def _open_none(settings: VmDriverSettings) -> VmDriver:
    """Build the driver that leaves the VM to the operator."""
    return NoneDriver()


def _open_command(settings: VmDriverSettings) -> VmDriver:
    """Build the driver that runs the operator's commands."""
    return CommandDriver(settings.stop_command, settings.start_command, settings.timeout)


def _open_qemu(settings: VmDriverSettings) -> VmDriver:
    """Build the driver that speaks QMP; it needs the socket path."""
    if not settings.qmp_socket:
        raise ConfigError("vm_driver.qmp_socket", "the qemu driver needs a QMP socket path")
    return QmpDriver(settings.qmp_socket, settings.timeout)


DRIVERS: dict[str, Callable[[VmDriverSettings], VmDriver]] = {
    "none": _open_none,
    "command": _open_command,
    "qemu": _open_qemu,
}


def open_driver(settings: VmDriverSettings) -> VmDriver:
    """Build the VM driver the settings name."""
    factory = DRIVERS.get(settings.kind)
    if factory is None:
        names = ", ".join(DRIVERS)
        raise ConfigError("vm_driver.kind", f"unknown driver {settings.kind!r}: use {names}")
    if settings.timeout <= 0:
        raise ConfigError("vm_driver.timeout", f"must be positive, not {settings.timeout:g}")
    return factory(settings)

"""A real controller process: restarts, kill -9, and hostile bytes on its port."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from nodes.client import call_sync
from nodes.errors import AuthenticationFailed
from tests.cli.conftest import Deployment, make_deployment

pytestmark = pytest.mark.slow


def _runfile(deployment: Deployment) -> dict[str, object]:
    return dict(json.loads((deployment.root / "data" / "run" / "controller.json").read_text()))


def _controller_state(deployment: Deployment) -> str:
    rows = deployment.json("status")
    return str(next(r for r in rows if r["name"] == "controller")["state"])


def _state(deployment: Deployment) -> tuple[object, ...]:
    return (
        deployment.json("ledger", "head"),
        deployment.json("vm", "list"),
        deployment.json("ledger", "log"),
    )


@pytest.fixture
def running(tmp_path: Path) -> object:
    deployment = make_deployment(tmp_path / "deployment")
    deployment.ok("up")
    yield deployment
    deployment.run("down")


def test_restart_keeps_the_ledger_head_and_the_projection(running: Deployment) -> None:
    for i in range(3):
        running.ok("vm", "register", f"vm-{i}", "--ip", f"10.0.1.{i}", "--disk", "system:root:1G")
    before = _state(running)
    assert running.ok("down").stdout.startswith("stopped controller")
    assert _controller_state(running) == "down"
    running.ok("up")
    assert _state(running) == before
    assert running.json("ledger", "verify")["ok"] is True


def test_kill_9_loses_no_acknowledged_event(running: Deployment) -> None:
    acknowledged = []
    for i in range(5):
        running.ok("vm", "register", f"k-{i}", "--ip", f"10.0.2.{i}", "--disk", "system:root:1G")
        acknowledged.append(f"k-{i}")
    head = running.json("ledger", "head")
    pid = int(str(_runfile(running)["pid"]))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _controller_state(running) != "down" and time.monotonic() < deadline:
        time.sleep(0.05)
    running.ok("up")
    assert running.json("ledger", "head") == head
    names = {vm["name"] for vm in running.json("vm", "list")}
    assert set(acknowledged) <= names
    report = running.json("ledger", "verify")
    assert report["ok"] is True, report["problems"]


def test_wrong_secret_is_rejected_and_the_node_keeps_serving(running: Deployment) -> None:
    run = _runfile(running)
    with pytest.raises(AuthenticationFailed):
        call_sync(str(run["host"]), int(str(run["port"])), b"not the secret", "ping")
    assert running.json("ledger", "head")["count"] >= 1
    log = (running.root / "data" / "logs" / "controller.log").read_text()
    assert "rejected connection" in log


def _raw_connection(run: dict[str, object]) -> socket.socket:
    return socket.create_connection((str(run["host"]), int(str(run["port"]))), timeout=5)


def _closed(sock: socket.socket) -> bool:
    try:
        while chunk := sock.recv(65536):
            del chunk
    except (ConnectionResetError, TimeoutError):
        return False
    return True


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x05not-cbor-at-all",
        struct.pack(">I", 2**31) + b"x" * 16,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["malformed", "oversized", "http"],
)
def test_hostile_frames_close_only_that_connection(running: Deployment, garbage: bytes) -> None:
    run = _runfile(running)
    with _raw_connection(run) as sock:
        sock.sendall(garbage)
        assert _closed(sock)
    assert _controller_state(running) == "up"
    assert running.json("ledger", "verify")["ok"] is True


def test_bad_frame_after_the_handshake_closes_that_connection_only(running: Deployment) -> None:
    import asyncio

    from nodes.auth import authenticate_client
    from nodes.client import NodeClient

    run = _runfile(running)
    host, port = str(run["host"]), int(str(run["port"]))
    secret = bytes.fromhex((running.root / "secret").read_text().strip())

    async def scenario() -> tuple[bytes, dict[str, object]]:
        async with NodeClient(host, port, secret, peer="controller") as other:
            reader, writer = await asyncio.open_connection(host, port)
            await authenticate_client(reader, writer, secret, "hostile", 5)
            writer.write(struct.pack(">I", 7) + b"\xff" * 7)
            await writer.drain()
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
            return rest, await other.call("ledger.head")

    rest, head = asyncio.run(scenario())
    assert rest == b""
    assert int(str(head["count"])) >= 1
    log = (running.root / "data" / "logs" / "controller.log").read_text()
    assert "closing connection from hostile" in log

import asyncio
import contextlib
import datetime
import logging
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

import cbor2
import pytest

from ledger.errors import UnknownVm
from nodes.auth import authenticate_client
from nodes.client import NodeClient, call_sync
from nodes.errors import AuthenticationFailed, NodeUnreachable, RemoteError, RequestTimeout
from nodes.server import Handler, NodeServer
from nodes.wire import encode_frame

SECRET = b"deployment-secret-for-the-tests"
HOST = "127.0.0.1"


async def echo(args: dict[str, Any]) -> dict[str, Any]:
    return {"echo": args}


@contextlib.asynccontextmanager
async def serving(
    handlers: Mapping[str, Handler] | None = None, **options: Any
) -> AsyncIterator[int]:
    server = NodeServer("n1", SECRET, handlers or {"echo": echo}, **options)
    host, port = await server.start()
    assert host == HOST
    serve = asyncio.create_task(server.serve_forever())
    try:
        yield port
    finally:
        await server.close()
        await serve


@contextlib.asynccontextmanager
async def authenticated_socket(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await authenticate_client(reader, writer, SECRET, "raw", 5.0)
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def is_closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(5):
            return await reader.read() == b""
    except ConnectionResetError:
        return True


async def assert_serves_a_good_client(port: int) -> None:
    async with NodeClient(HOST, port, SECRET) as client:
        assert await client.call("echo", {"still": "serving"}) == {"echo": {"still": "serving"}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def test_call_returns_the_handler_result() -> None:
    async def scenario() -> None:
        async with serving() as port, NodeClient(HOST, port, SECRET) as client:
            assert client.peer == "n1"
            assert await client.call("echo", {"vm": "web", "data": b"\x01"}) == {
                "echo": {"vm": "web", "data": b"\x01"}
            }
            assert await client.call("echo") == {"echo": {}}

    asyncio.run(scenario())


def test_ping_is_built_in_and_names_the_node() -> None:
    async def scenario() -> None:
        async with serving() as port, NodeClient(HOST, port, SECRET) as client:
            answer = await client.call("ping")
            assert answer["node"] == "n1"
            assert isinstance(answer["pid"], int)

    asyncio.run(scenario())


def test_a_handler_can_override_ping() -> None:
    async def ping(args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    async def scenario() -> None:
        async with serving({"ping": ping}) as port, NodeClient(HOST, port, SECRET) as client:
            assert await client.call("ping") == {"pong": True}

    asyncio.run(scenario())


def test_call_sync_runs_one_call_from_synchronous_code() -> None:
    async def scenario() -> None:
        async with serving() as port:
            answer = await asyncio.to_thread(call_sync, HOST, port, SECRET, "echo", {"a": 1})
            assert answer == {"echo": {"a": 1}}

    asyncio.run(scenario())


def test_wrong_secret_is_rejected_logged_and_good_clients_are_still_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with serving() as port:
            with pytest.raises(AuthenticationFailed, match="authentication with n1 failed"):
                async with NodeClient(HOST, port, b"not the secret"):
                    pass
            await assert_serves_a_good_client(port)

    asyncio.run(scenario())
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "vmsnap.node"
    assert "rejected connection from 127.0.0.1:" in warning.getMessage()
    assert "authentication with cli failed" in warning.getMessage()


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (struct.pack(">I", 2) + b"\x61\xff", "not valid CBOR"),
        (struct.pack(">I", 4) + cbor2.dumps([1, 2, 3]), "not a map"),
        (encode_frame({"op": "echo", "args": {}}), "no integer 'id'"),
        (encode_frame({"id": 1, "op": 5, "args": {}}), "no string 'op'"),
        (encode_frame({"id": 1, "op": "echo", "args": [1]}), "no map 'args'"),
        (struct.pack(">I", 4097), "exceeds the maximum of 4096"),
    ],
    ids=["bad-cbor", "not-a-map", "missing-id", "ill-typed-op", "ill-typed-args", "oversized"],
)
def test_bad_frame_closes_that_connection_only(
    frame: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serving(max_frame=4096) as port:
            async with NodeClient(HOST, port, SECRET) as bystander:
                async with authenticated_socket(port) as (reader, writer):
                    writer.write(frame)
                    await writer.drain()
                    assert await is_closed_by_peer(reader)
                assert await bystander.call("echo", {"n": 1}) == {"echo": {"n": 1}}
            await assert_serves_a_good_client(port)

    asyncio.run(scenario())
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "closing connection from raw at 127.0.0.1:" in warning.getMessage()
    assert problem in warning.getMessage()


def test_unknown_operation_is_answered_with_exit_code_2() -> None:
    async def scenario() -> None:
        async with serving() as port, NodeClient(HOST, port, SECRET) as client:
            with pytest.raises(RemoteError) as raised:
                await client.call("fly")
            assert raised.value.kind == "UnknownOperation"
            assert raised.value.exit_code == 2
            assert raised.value.message == "unknown operation 'fly' on node n1"

    asyncio.run(scenario())


def test_vmsnap_error_from_a_handler_round_trips_kind_message_and_exit_code() -> None:
    async def lookup(args: dict[str, Any]) -> dict[str, Any]:
        raise UnknownVm(args["name"])

    async def scenario() -> None:
        async with serving({"lookup": lookup}) as port, NodeClient(HOST, port, SECRET) as client:
            with pytest.raises(RemoteError) as raised:
                await client.call("lookup", {"name": "web"})
            assert raised.value.kind == "UnknownVm"
            assert raised.value.message == str(UnknownVm("web"))
            assert raised.value.exit_code == UnknownVm.exit_code == 4

    asyncio.run(scenario())


def test_unexpected_exception_becomes_internal_error_and_the_node_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def divide(args: dict[str, Any]) -> dict[str, Any]:
        return {"q": args["a"] / args["b"]}

    async def scenario() -> None:
        async with serving({"divide": divide}) as port, NodeClient(HOST, port, SECRET) as client:
            with pytest.raises(RemoteError) as raised:
                await client.call("divide", {"a": 1, "b": 0})
            assert raised.value.kind == "InternalError"
            assert raised.value.exit_code == 1
            assert raised.value.message == (
                "internal error on node n1: ZeroDivisionError: division by zero"
            )
            assert await client.call("divide", {"a": 6, "b": 3}) == {"q": 2.0}

    asyncio.run(scenario())
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.exc_info is not None
    assert "divide" in error.getMessage()


def test_result_that_is_not_plain_data_becomes_internal_error() -> None:
    async def now(args: dict[str, Any]) -> dict[str, Any]:
        return {"now": datetime.datetime.now(tz=datetime.UTC)}

    async def scenario() -> None:
        async with serving({"now": now}) as port, NodeClient(HOST, port, SECRET) as client:
            with pytest.raises(RemoteError, match="internal error on node n1") as raised:
                await client.call("now")
            assert raised.value.kind == "InternalError"
            assert (await client.call("ping"))["node"] == "n1"

    asyncio.run(scenario())


def test_concurrent_calls_on_one_connection_are_answered_out_of_order() -> None:
    opened = asyncio.Event()
    finished: list[str] = []

    async def gate(args: dict[str, Any]) -> dict[str, Any]:
        await opened.wait()
        finished.append("gate")
        return {"passed": args["who"]}

    async def open_gate(args: dict[str, Any]) -> dict[str, Any]:
        opened.set()
        finished.append("open")
        return {"opened": True}

    async def scenario() -> None:
        handlers = {"gate": gate, "open": open_gate}
        async with serving(handlers) as port, NodeClient(HOST, port, SECRET) as client:
            waiting = [asyncio.create_task(client.call("gate", {"who": n})) for n in range(3)]
            assert await client.call("open") == {"opened": True}
            assert await asyncio.gather(*waiting) == [{"passed": n} for n in range(3)]

    asyncio.run(scenario())
    assert finished == ["open", "gate", "gate", "gate"]


def test_call_without_an_answer_in_time_raises_request_timeout_and_the_late_answer_is_dropped() -> (
    None
):
    async def slow(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"late": True}

    async def scenario() -> None:
        async with serving({"slow": slow}) as port, NodeClient(HOST, port, SECRET) as client:
            with pytest.raises(RequestTimeout, match=r"request slow timed out after 0\.1 s"):
                await client.call("slow", timeout=0.1)
            await asyncio.sleep(0.4)
            assert (await client.call("ping"))["node"] == "n1"

    asyncio.run(scenario())


def test_server_close_cancels_running_requests_and_fails_waiting_calls() -> None:
    started = asyncio.Event()

    async def forever(args: dict[str, Any]) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()
        return {}

    async def scenario() -> None:
        server = NodeServer("n1", SECRET, {"forever": forever})
        _, port = await server.start()
        async with NodeClient(HOST, port, SECRET) as client:
            call = asyncio.create_task(client.call("forever"))
            await started.wait()
            await server.close()
            with pytest.raises(NodeUnreachable, match="connection closed by the node"):
                await call
            with pytest.raises(NodeUnreachable):
                await client.call("ping")

    asyncio.run(scenario())


def test_connecting_to_a_closed_port_raises_node_unreachable() -> None:
    port = free_port()

    with pytest.raises(NodeUnreachable, match=f"node n9 at 127.0.0.1:{port} is unreachable"):
        call_sync(HOST, port, SECRET, "ping", peer="n9", timeout=5)

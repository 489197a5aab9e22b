"""The NBD server: serves block devices to QEMU, qemu-img, qemu-io and nbdsh over TCP.

Every connection is a task owned by the server: the fixed newstyle handshake (option
haggling) here, then the transmission phase in ``nodes.nbd_transmission``. The wire
format is in ``nodes.nbd_protocol``.

Given a TLS context the server requires TLS: the client must send NBD_OPT_STARTTLS
first; any other option but NBD_OPT_ABORT earns NBD_REP_ERR_TLS_REQD (and
NBD_OPT_EXPORT_NAME, which has no error reply, ends the session). After the ACK the
connection is upgraded in place and haggling goes on inside TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote

from nodes import nbd_protocol as wire
from nodes.blockdev import BlockDevice
from nodes.errors import NbdProtocolError
from nodes.nbd_transmission import STREAM_LIMIT, Choice, Transmission, discard

log = logging.getLogger("vmsnap.nbd")

Exports = Mapping[str, BlockDevice] | Callable[[str], BlockDevice | None]
"""Devices by export name, or a function finding the device for a name (None: no such export)."""

MAX_OPTION_DATA = 64 * 1024
"""Longer option data is read, dropped and refused with NBD_REP_ERR_TOO_BIG."""


class _Link:
    """A connection as the server tracks it: its writer, and its export once chosen."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.peer = _address(writer)
        self.export: str | None = None
        self.transmission: Transmission | None = None


class NbdServer:
    """Serves named block devices over NBD; exports come and go while it runs.

    Exports are found by name in the mapping given (plus those added later), or by
    calling the function given. Every export announces the same block sizes:
    minimum 1, preferred 4096, maximum ``max_request``.
    """

    def __init__(
        self,
        exports: Exports,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_request: int = 32 * 1024 * 1024,
        timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not wire.PREFERRED_BLOCK <= max_request <= 1 << 31:
            raise ValueError(f"max_request {max_request} is not within 4096..2**31")
        self._lookup: Callable[[str], BlockDevice | None] | None = None
        self._exports: dict[str, BlockDevice] = {}
        if isinstance(exports, Mapping):
            for name, device in exports.items():
                self.add_export(name, device)
        else:
            self._lookup = exports
        self._host = host
        self._port = port
        self._max_request = max_request
        self._timeout = timeout
        self.tls = tls
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._links: dict[asyncio.Task[None], _Link] = {}
        self._closing = False

    async def start(self) -> tuple[str, int]:
        """Listen and return the host and port actually bound."""
        if self._closing:
            raise RuntimeError("the NBD server is closed")
        if self._address is None:
            self._server = await asyncio.start_server(
                self._accept, self._host, self._port, limit=STREAM_LIMIT
            )
            host, port = self._server.sockets[0].getsockname()[:2]
            self._address = str(host), int(port)
        return self._address

    async def close(self) -> None:
        """Stop listening, let requests in flight finish (within the timeout), close all."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        links = dict(self._links)
        for task, link in links.items():
            self._stop(task, link)
        if links:
            _, pending = await asyncio.wait(links, timeout=self._timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for link in links.values():
            # A task cancelled before its first step never closed its own writer.
            await _close_writer(link.writer, self._timeout)
        if self._server is not None:
            await self._server.wait_closed()

    def add_export(self, name: str, device: BlockDevice) -> None:
        """Serve `device` under `name` to connections negotiated from now on."""
        encoded = name.encode()
        if len(encoded) > wire.MAX_STRING or b"\0" in encoded:
            raise ValueError(f"export name {name!r} is over 4096 bytes or holds NUL")
        if name in self._exports:
            raise ValueError(f"export {name!r} is already served")
        self._exports[name] = device

    def remove_export(self, name: str) -> None:
        """Stop serving `name` and close its connections (nothing happens for unknown names)."""
        self._exports.pop(name, None)
        for task, link in list(self._links.items()):
            if link.export == name:
                self._stop(task, link)

    def url(self, name: str) -> str:
        """Return the nbd:// URL of an export, as qemu-img and qemu-io take it."""
        if self._address is None:
            raise RuntimeError("the NBD server is not started")
        host, port = self._address
        if ":" in host:
            host = f"[{host}]"
        return f"nbd://{host}:{port}/{quote(name, safe='')}"

    def _find(self, name: str) -> BlockDevice | None:
        """Return the device served under `name`, if any."""
        device = self._exports.get(name)
        if device is None and self._lookup is not None:
            device = self._lookup(name)
        return device

    def _stop(self, task: asyncio.Task[None], link: _Link) -> None:
        """End a connection: gently in transmission (requests in flight finish), else at once."""
        if link.transmission is not None:
            link.transmission.stop()
        else:
            task.cancel()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a new connection in a task owned by this server."""
        if self._closing:
            writer.close()
            return
        link = _Link(writer)
        task = asyncio.create_task(self._connection(reader, link))
        self._links[task] = link
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Drop a finished connection, reporting a failure nothing else caught."""
        self._links.pop(task, None)
        if not task.cancelled() and (err := task.exception()) is not None:
            log.error("NBD connection task failed", exc_info=err)

    async def _connection(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """Serve one connection from handshake to close."""
        try:
            choice = await _Negotiation(self, reader, link).run()
            if choice is not None:
                link.transmission = Transmission(
                    reader, link.writer, link.peer, choice, self._timeout
                )
                log.debug("NBD client %s uses export %r", link.peer, choice.name)
                await link.transmission.run()
        except* NbdProtocolError as group:
            log.warning("closing NBD connection from %s: %s", link.peer, group.exceptions[0])
        except* (OSError, EOFError) as group:
            log.info("NBD connection from %s lost: %r", link.peer, group.exceptions[0])
        finally:
            await _close_writer(link.writer, self._timeout)


Handler = Callable[[int, bytes], Awaitable[Choice | None]]


class _Negotiation:
    """Option haggling on one connection, until the client picks an export or leaves."""

    def __init__(self, server: NbdServer, reader: asyncio.StreamReader, link: _Link) -> None:
        self._server = server
        self._reader = reader
        self._link = link
        self._timeout = server._timeout
        self._structured = False
        self._meta_export: str | None = None
        self._no_zeroes = False
        self._ended = False
        self._tls_pending = server.tls is not None
        self._handlers: dict[int, Handler] = {
            wire.OPT_STARTTLS: self._starttls,
            wire.OPT_EXPORT_NAME: self._export_name,
            wire.OPT_ABORT: self._abort,
            wire.OPT_LIST: self._list,
            wire.OPT_INFO: self._info,
            wire.OPT_GO: self._info,
            wire.OPT_STRUCTURED_REPLY: self._structured_reply,
            wire.OPT_LIST_META_CONTEXT: self._meta_context,
            wire.OPT_SET_META_CONTEXT: self._meta_context,
        }

    async def run(self) -> Choice | None:
        """Return the export chosen, or None when the client aborted or asked for none known."""
        await self._send(wire.greeting())
        flags = wire.decode_client_flags(await self._read(wire.CLIENT_FLAGS.size))
        self._no_zeroes = bool(flags & wire.C_NO_ZEROES)
        while not self._ended:
            option, length = wire.decode_option_header(await self._read(wire.OPTION_HEADER.size))
            if length > MAX_OPTION_DATA:
                await discard(self._reader, length, self._timeout)
                if option == wire.OPT_EXPORT_NAME:
                    raise NbdProtocolError(f"export name of {length} bytes")
                await self._reply(option, wire.REP_ERR_TOO_BIG, "option data too long")
                continue
            choice = await self._option(option, await self._read(length))
            if choice is not None:
                return choice
        return None

    async def _option(self, option: int, data: bytes) -> Choice | None:
        """Answer one option; malformed data earns NBD_REP_ERR_INVALID."""
        if self._tls_pending and option not in (wire.OPT_STARTTLS, wire.OPT_ABORT):
            if option == wire.OPT_EXPORT_NAME:
                raise NbdProtocolError("NBD_OPT_EXPORT_NAME before TLS was negotiated")
            await self._reply(option, wire.REP_ERR_TLS_REQD, "TLS is required: use STARTTLS")
            return None
        handler = self._handlers.get(option)
        if handler is None:
            await self._reply(option, wire.REP_ERR_UNSUP, f"option {option} is not supported")
            return None
        try:
            return await handler(option, data)
        except NbdProtocolError as err:
            if option in (wire.OPT_EXPORT_NAME, wire.OPT_STARTTLS):
                raise  # no error reply: the first has none, the second failed after its ACK
            await self._reply(option, wire.REP_ERR_INVALID, err.problem)
            return None

    async def _export_name(self, option: int, data: bytes) -> Choice | None:
        """Enter transmission the old way; an unknown name can only end the session."""
        name = wire.decode_name(data)
        device = self._server._find(name)
        if device is None:
            log.info("NBD client %s asked for unknown export %r", self._link.peer, name)
            self._ended = True
            return None
        choice = self._choose(name, device)
        await self._send(wire.export_name_reply(device.size, self._flags(device), self._no_zeroes))
        return choice

    async def _abort(self, option: int, data: bytes) -> Choice | None:
        """Acknowledge and end the session (the client may already be gone)."""
        self._ended = True
        with contextlib.suppress(OSError):
            await self._reply(option, wire.REP_ACK)
        return None

    async def _starttls(self, option: int, data: bytes) -> Choice | None:
        """Acknowledge, then upgrade the connection to TLS in place."""
        context = self._server.tls
        if context is None:
            await self._reply(option, wire.REP_ERR_UNSUP, "TLS is not configured on this server")
            return None
        if data or not self._tls_pending:
            problem = "TLS is already negotiated" if data == b"" else "STARTTLS takes no data"
            await self._reply(option, wire.REP_ERR_INVALID, problem)
            return None
        await self._reply(option, wire.REP_ACK)
        # Bytes sent before the client could see the ACK would pass as if they came
        # through TLS (plaintext injection): a client that sent any is cut off.
        if getattr(self._reader, "_buffer", b""):
            raise NbdProtocolError("data sent between NBD_OPT_STARTTLS and the TLS handshake")
        await self._link.writer.start_tls(context, ssl_handshake_timeout=self._timeout)
        self._tls_pending = False
        log.debug("NBD client %s switched to TLS", self._link.peer)
        return None

    async def _list(self, option: int, data: bytes) -> Choice | None:
        """Name every export held by name (those a lookup function finds are not listed)."""
        if data:
            raise NbdProtocolError("NBD_OPT_LIST takes no data")
        entries = [
            wire.option_reply(option, wire.REP_SERVER, wire.server_entry(name))
            for name in sorted(self._server._exports)
        ]
        await self._send(b"".join(entries) + wire.option_reply(option, wire.REP_ACK))
        return None

    async def _info(self, option: int, data: bytes) -> Choice | None:
        """Describe an export (NBD_OPT_INFO) or also enter transmission with it (NBD_OPT_GO)."""
        name = wire.decode_info_request(data)
        device = self._server._find(name)
        if device is None:
            await self._reply(option, wire.REP_ERR_UNKNOWN, f"no export named {name!r}")
            return None
        choice = self._choose(name, device) if option == wire.OPT_GO else None
        export = wire.info_export(device.size, self._flags(device))
        sizes = wire.info_block_size(self._server._max_request)
        await self._send(
            wire.option_reply(option, wire.REP_INFO, export)
            + wire.option_reply(option, wire.REP_INFO, sizes)
            + wire.option_reply(option, wire.REP_ACK)
        )
        return choice

    async def _structured_reply(self, option: int, data: bytes) -> Choice | None:
        """Switch this connection to structured replies."""
        if data:
            raise NbdProtocolError("NBD_OPT_STRUCTURED_REPLY takes no data")
        self._structured = True
        await self._reply(option, wire.REP_ACK)
        return None

    async def _meta_context(self, option: int, data: bytes) -> Choice | None:
        """List or select metadata contexts; base:allocation is the only one."""
        selecting = option == wire.OPT_SET_META_CONTEXT
        if selecting:
            self._meta_export = None  # a SET replaces the selection even when it fails
            if not self._structured:
                await self._reply(
                    option, wire.REP_ERR_INVALID, "negotiate structured replies first"
                )
                return None
        name, queries = wire.decode_meta_request(data)
        if self._server._find(name) is None:
            await self._reply(option, wire.REP_ERR_UNKNOWN, f"no export named {name!r}")
            return None
        replies = b""
        if wire.selects_base_allocation(queries, listing=not selecting):
            context_id = wire.BASE_ALLOCATION_ID if selecting else 0
            entry = wire.meta_context_entry(context_id, wire.BASE_ALLOCATION)
            replies = wire.option_reply(option, wire.REP_META_CONTEXT, entry)
            if selecting:
                self._meta_export = name
        await self._send(replies + wire.option_reply(option, wire.REP_ACK))
        return None

    def _choose(self, name: str, device: BlockDevice) -> Choice:
        """Settle the transmission terms for an export and tie the connection to it."""
        self._link.export = name
        session = wire.Session(
            size=device.size,
            read_only=device.read_only,
            max_request=self._server._max_request,
            structured=self._structured,
            block_status=self._meta_export == name,
        )
        return Choice(name, device, session)

    def _flags(self, device: BlockDevice) -> int:
        """Return the transmission flags this connection gets for `device`."""
        return wire.transmission_flags(device.read_only, self._structured)

    async def _reply(self, option: int, reply_type: int, message: str = "") -> None:
        """Send one option reply, with a message for the user when it is an error."""
        await self._send(wire.option_reply(option, reply_type, message.encode()))

    async def _send(self, data: bytes) -> None:
        """Write handshake bytes and wait, within the timeout, until they are sent."""
        self._link.writer.write(data)
        async with asyncio.timeout(self._timeout):
            await self._link.writer.drain()

    async def _read(self, length: int) -> bytes:
        """Read exactly `length` handshake bytes within the timeout."""
        async with asyncio.timeout(self._timeout):
            return await self._reader.readexactly(length)


async def _close_writer(writer: asyncio.StreamWriter, timeout: float) -> None:
    """Close a connection's transport and wait, within the timeout, until it is gone."""
    writer.close()
    with contextlib.suppress(OSError):  # includes TimeoutError
        async with asyncio.timeout(timeout):
            await writer.wait_closed()


def _address(writer: asyncio.StreamWriter) -> str:
    """Return the peer address of a connection as host:port."""
    peername = writer.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return str(peername)

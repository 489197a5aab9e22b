"""Length-prefixed CBOR frames, the unit of every exchange between vmsnap processes.

A frame is a 4-byte big-endian unsigned body length followed by the body, one CBOR map
with string keys::

    +--------+--------+--------+--------+----------------------------------+
    |         length N (uint32, BE)     |  body: N bytes, one CBOR map     |
    +--------+--------+--------+--------+----------------------------------+

Bodies hold plain data only: maps, arrays, text and byte strings, integers that fit in
64 bits, floats, booleans and null. Tagged values (dates, decimals, sets, shared
references …) are refused, so a peer can never make the other side build objects that
are not plain data or structures that refer to themselves. A frame longer than the
receiver's maximum is refused from its header, before the body is read.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
from collections.abc import Mapping
from typing import Any

import cbor2

from nodes.errors import ProtocolError
from nodes.frame_stream import FrameStream

MAX_FRAME = 16 * 1024 * 1024
"""Default largest body, in bytes, a frame may carry."""

_HEADER = struct.Struct(">I")
_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1
_SCALARS = (str, bytes, bool, float, type(None))
_PLAIN_SCALARS = frozenset(_SCALARS)


def encode_frame(message: Mapping[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    """Return ``message`` as a frame: length header plus CBOR body.

    The body is encoded behind a placeholder header that is then filled in, so a large
    body is never copied a second time to put four bytes in front of it.
    """
    if not all(isinstance(key, str) for key in message):
        raise ProtocolError("frame keys must be strings")
    _check_plain(message, distinct=False)
    frame = io.BytesIO()
    frame.write(bytes(_HEADER.size))
    try:
        cbor2.CBOREncoder(frame).encode(dict(message))
    except (cbor2.CBOREncodeError, TypeError, ValueError) as err:
        raise ProtocolError(f"message cannot be encoded: {err}") from err
    length = frame.tell() - _HEADER.size
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the maximum of {max_frame}")
    with frame.getbuffer() as view:
        _HEADER.pack_into(view, 0, length)
    return frame.getvalue()


def decode_body(body: bytes) -> dict[str, Any]:
    """Return the map a frame body holds; raise ProtocolError for anything else."""
    stream = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except Exception as err:  # cbor2 and the semantic decoders raise many types
        raise ProtocolError(f"frame body is not valid CBOR: {type(err).__name__}: {err}") from err
    if stream.tell() != len(body):
        raise ProtocolError(f"frame body has {len(body) - stream.tell()} trailing bytes")
    if not isinstance(value, dict):
        raise ProtocolError(f"frame body is a {type(value).__name__}, not a map")
    if not all(isinstance(key, str) for key in value):
        raise ProtocolError("frame keys must be strings")
    _check_plain(value, distinct=True)
    return value


async def read_frame(
    reader: asyncio.StreamReader | FrameStream,
    max_frame: int = MAX_FRAME,
    *,
    body_timeout: float | None = None,
) -> dict[str, Any] | None:
    """Read one frame; None when the peer closed the stream cleanly between frames.

    The header may be awaited indefinitely (an idle peer is legal); once it has arrived,
    the body must follow within ``body_timeout`` seconds.
    """
    if isinstance(reader, FrameStream):
        body = await reader.read_body(max_frame, body_timeout)
        return None if body is None else decode_body(body)
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        raise ProtocolError("stream ended inside a frame header") from err
    (length,) = _HEADER.unpack(header)
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the maximum of {max_frame}")
    try:
        async with asyncio.timeout(body_timeout):
            body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise ProtocolError(
            f"stream ended after {len(err.partial)} of {length} frame bytes"
        ) from err
    except TimeoutError as err:
        raise ProtocolError(
            f"frame body of {length} bytes did not arrive within {body_timeout:g} s"
        ) from err
    return decode_body(body)


async def write_frame(
    writer: asyncio.StreamWriter | FrameStream,
    message: Mapping[str, Any],
    max_frame: int = MAX_FRAME,
) -> None:
    """Send ``message`` as one frame and wait until the transport accepted it."""
    writer.write(encode_frame(message, max_frame))
    await writer.drain()


def _check_plain(value: object, *, distinct: bool) -> None:
    """Raise ProtocolError unless ``value`` is plain data (with no container met twice).

    Containers wait on a stack and their members are checked in place, so a long list of
    scalars (chunk blobs, ids, indexes) costs one type lookup per member.
    """
    seen: set[int] = set()
    stack: list[list[Any] | dict[Any, Any]] = []
    _check_member(value, stack)
    while stack:
        container = stack.pop()
        if distinct:
            if id(container) in seen:
                raise ProtocolError("value is shared or refers to itself")
            seen.add(id(container))
        members = (
            itertools.chain(container, container.values())
            if isinstance(container, dict)
            else container
        )
        for item in members:
            kind = type(item)
            if kind in _PLAIN_SCALARS or (kind is int and _INT_MIN <= item <= _INT_MAX):
                continue
            _check_member(item, stack)


def _check_member(item: object, stack: list[list[Any] | dict[Any, Any]]) -> None:
    """Push a container on ``stack``; raise ProtocolError for a value that is not plain."""
    if isinstance(item, int) and not isinstance(item, bool):
        if not _INT_MIN <= item <= _INT_MAX:
            raise ProtocolError("integer does not fit in 64 bits")
    elif isinstance(item, list | dict):
        stack.append(item)
    elif not isinstance(item, _SCALARS):
        raise ProtocolError(f"a {type(item).__name__} is not plain data")

"""The NBD wire format: constants, struct layouts, and pure encoders and decoders.

All integers are big-endian. The fixed newstyle handshake, then transmission::

    server   NBDMAGIC u64 · IHAVEOPT u64 · handshake flags u16
    client   client flags u32
    client   IHAVEOPT u64 · option u32 · length u32 · data              (repeated)
    server   REPLY_MAGIC u64 · option u32 · reply type u32 · length u32 · data
    client   REQUEST_MAGIC u32 · flags u16 · type u16 · handle u64 · offset u64 · length u32
             [· data, for a write]
    server   SIMPLE_MAGIC u32 · error u32 · handle u64 [· data, for a read]
          or STRUCTURED_MAGIC u32 · flags u16 · type u16 · handle u64 · length u32 · payload

The reference is the protocol document of the NetworkBlockDevice project (doc/proto.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from nodes.blockdev import STATE_HOLE, STATE_ZERO, Extent
from nodes.errors import NbdProtocolError

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
C_FIXED_NEWSTYLE = 1 << 0
C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

HAS_FLAGS = 1 << 0
READ_ONLY = 1 << 1
SEND_FLUSH = 1 << 2
SEND_FUA = 1 << 3
SEND_TRIM = 1 << 5
SEND_WRITE_ZEROES = 1 << 6
SEND_DF = 1 << 7
CAN_MULTI_CONN = 1 << 8
SEND_CACHE = 1 << 10

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
COMMAND_NAMES = {
    CMD_READ: "READ",
    CMD_WRITE: "WRITE",
    CMD_DISC: "DISC",
    CMD_FLUSH: "FLUSH",
    CMD_TRIM: "TRIM",
    CMD_CACHE: "CACHE",
    CMD_WRITE_ZEROES: "WRITE_ZEROES",
    CMD_BLOCK_STATUS: "BLOCK_STATUS",
}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

EPERM = 1
EIO = 5
EINVAL = 22
ENOSPC = 28
ERROR_NAMES = {EPERM: "EPERM", EIO: "EIO", EINVAL: "EINVAL", ENOSPC: "ENOSPC"}

BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1
MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_STRING = 4096
DOS_WRITE = 1 << 25
"""Write payloads below this size are read and dropped, never cut off (spec: not a DoS)."""

HANDSHAKE = struct.Struct(">QQH")
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")
OPTION_REPLY = struct.Struct(">QIII")
REQUEST = struct.Struct(">IHHQQI")
SIMPLE_REPLY = struct.Struct(">IIQ")
CHUNK = struct.Struct(">IHHQI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_STATE_FLAGS = STATE_HOLE | STATE_ZERO
_WRITES = frozenset({CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES})
_SIZED = frozenset({CMD_READ, CMD_WRITE, CMD_CACHE, CMD_WRITE_ZEROES})
_ALLOWED_FLAGS = {
    CMD_READ: CMD_FLAG_FUA,
    CMD_WRITE: CMD_FLAG_FUA,
    CMD_FLUSH: CMD_FLAG_FUA,
    CMD_TRIM: CMD_FLAG_FUA,
    CMD_CACHE: CMD_FLAG_FUA,
    CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
    CMD_BLOCK_STATUS: CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
}


@dataclass(frozen=True, slots=True)
class Request:
    """One transmission-phase request header."""

    flags: int
    type: int
    handle: int
    offset: int
    length: int

    @property
    def name(self) -> str:
        """The command's name, for logs."""
        return COMMAND_NAMES.get(self.type, f"command {self.type}")

    @property
    def writes(self) -> bool:
        """True for the commands that change the export."""
        return self.type in _WRITES


@dataclass(frozen=True, slots=True)
class Session:
    """What the handshake settled for one connection's transmission phase."""

    size: int
    read_only: bool
    max_request: int
    structured: bool
    block_status: bool


def greeting() -> bytes:
    """Return the server's opening: magic, option magic and handshake flags."""
    return HANDSHAKE.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def decode_client_flags(data: bytes) -> int:
    """Return the client's flags; raise when it sets one the server did not offer."""
    (flags,) = CLIENT_FLAGS.unpack(data)
    if flags & ~(C_FIXED_NEWSTYLE | C_NO_ZEROES):
        raise NbdProtocolError(f"unknown client flags {flags:#x}")
    return int(flags)


def decode_option_header(data: bytes) -> tuple[int, int]:
    """Return (option, data length) of an option header; raise on a bad magic."""
    magic, option, length = OPTION_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise NbdProtocolError(f"bad option magic {magic:#x}")
    return int(option), int(length)


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    """Return one option reply."""
    return OPTION_REPLY.pack(REPLY_MAGIC, option, reply_type, len(data)) + data


def server_entry(name: str) -> bytes:
    """Return the data of an NBD_REP_SERVER reply naming one export."""
    encoded = name.encode()
    return _U32.pack(len(encoded)) + encoded


def info_export(size: int, flags: int) -> bytes:
    """Return the data of an NBD_INFO_EXPORT reply."""
    return struct.pack(">HQH", INFO_EXPORT, size, flags)


def info_block_size(maximum: int) -> bytes:
    """Return the data of an NBD_INFO_BLOCK_SIZE reply."""
    return struct.pack(">HIII", INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK, maximum)


def meta_context_entry(context_id: int, name: str) -> bytes:
    """Return the data of an NBD_REP_META_CONTEXT reply."""
    return _U32.pack(context_id) + name.encode()


def export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    """Return the answer to NBD_OPT_EXPORT_NAME: size, flags and, for old clients, padding."""
    return struct.pack(">QH", size, flags) + (b"" if no_zeroes else bytes(124))


def transmission_flags(read_only: bool, structured: bool) -> int:
    """Return the transmission flags of an export."""
    flags = HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN
    flags |= SEND_CACHE
    if structured:
        flags |= SEND_DF
    if read_only:
        flags |= READ_ONLY
    return flags


def decode_name(data: bytes) -> str:
    """Return an NBD string; raise when it is not one."""
    if len(data) > MAX_STRING or b"\0" in data:
        raise NbdProtocolError("string too long or holding NUL")
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise NbdProtocolError("string is not UTF-8") from err


def decode_info_request(data: bytes) -> str:
    """Return the export name of an NBD_OPT_INFO or NBD_OPT_GO request."""
    name, rest = _take_string(data)
    if len(rest) < 2:
        raise NbdProtocolError("information request count missing")
    (count,) = _U16.unpack_from(rest)
    if len(rest) != 2 + 2 * count:
        raise NbdProtocolError("information request list has the wrong length")
    return name


def decode_meta_request(data: bytes) -> tuple[str, list[str]]:
    """Return (export name, queries) of a LIST or SET meta context request."""
    name, rest = _take_string(data)
    if len(rest) < 4:
        raise NbdProtocolError("query count missing")
    (count,) = _U32.unpack_from(rest)
    rest = rest[4:]
    queries = []
    for _ in range(count):
        query, rest = _take_string(rest)
        if ":" not in query:
            raise NbdProtocolError(f"query {query!r} has no namespace")
        queries.append(query)
    if rest:
        raise NbdProtocolError("trailing bytes after the queries")
    return name, queries


def selects_base_allocation(queries: list[str], listing: bool) -> bool:
    """Return whether queries name base:allocation (listing also takes "base:" and none)."""
    if listing and not queries:
        return True
    return any(q == BASE_ALLOCATION or (listing and q == "base:") for q in queries)


def decode_request(data: bytes) -> Request:
    """Return a request header; raise on a bad magic."""
    magic, flags, command, handle, offset, length = REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise NbdProtocolError(f"bad request magic {magic:#x}")
    return Request(flags, command, handle, offset, length)


def check_request(request: Request, session: Session) -> int:
    """Return the NBD error a request earns before it reaches the device, or 0."""
    allowed = _ALLOWED_FLAGS.get(request.type)
    if allowed is None:
        return EINVAL
    if request.type == CMD_READ and session.structured:
        allowed |= CMD_FLAG_DF
    if request.flags & ~allowed:
        return EINVAL
    if request.type == CMD_FLUSH:
        return 0
    if request.type == CMD_BLOCK_STATUS and not session.block_status:
        return EINVAL
    if request.length == 0 or (request.type in _SIZED and request.length > session.max_request):
        return EINVAL
    if request.writes and session.read_only:
        return EPERM
    if request.offset + request.length > session.size:
        return ENOSPC if request.type in (CMD_WRITE, CMD_WRITE_ZEROES) else EINVAL
    return 0


def simple_reply(handle: int, error: int = 0) -> bytes:
    """Return a simple reply header (a successful read's data follows it)."""
    return SIMPLE_REPLY.pack(SIMPLE_MAGIC, error, handle)


def data_chunk_header(handle: int, offset: int, length: int) -> bytes:
    """Return the header and offset of a final OFFSET_DATA chunk; `length` data bytes follow."""
    header = CHUNK.pack(
        STRUCTURED_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, handle, 8 + length
    )
    return header + _U64.pack(offset)


def error_chunk(handle: int, error: int, message: str) -> bytes:
    """Return a final ERROR chunk carrying a human-readable message."""
    text = message.encode()[:MAX_STRING]
    return _final_chunk(REPLY_TYPE_ERROR, handle, struct.pack(">IH", error, len(text)) + text)


def block_status_chunk(handle: int, descriptors: list[tuple[int, int]]) -> bytes:
    """Return a final BLOCK_STATUS chunk for base:allocation."""
    body = b"".join(struct.pack(">II", length, flags) for length, flags in descriptors)
    return _final_chunk(REPLY_TYPE_BLOCK_STATUS, handle, _U32.pack(BASE_ALLOCATION_ID) + body)


def status_descriptors(extents: Iterable[Extent], length: int, one: bool) -> list[tuple[int, int]]:
    """Return (length, flags) descriptors covering at most `length` bytes, merged where equal."""
    descriptors: list[tuple[int, int]] = []
    covered = 0
    for extent in extents:
        size, flags = min(extent.length, length - covered), extent.flags & _STATE_FLAGS
        if size <= 0:
            continue
        if descriptors and descriptors[-1][1] == flags:
            descriptors[-1] = (descriptors[-1][0] + size, flags)
        else:
            descriptors.append((size, flags))
        covered += size
        if covered >= length:
            break
    if not descriptors:
        descriptors.append((length, 0))
    return descriptors[:1] if one else descriptors


def _final_chunk(reply_type: int, handle: int, payload: bytes) -> bytes:
    """Return a structured reply chunk that ends its reply."""
    return CHUNK.pack(STRUCTURED_MAGIC, REPLY_FLAG_DONE, reply_type, handle, len(payload)) + payload


def _take_string(data: bytes) -> tuple[str, bytes]:
    """Split a length-prefixed string off the front of `data`."""
    if len(data) < 4:
        raise NbdProtocolError("string length missing")
    (length,) = _U32.unpack_from(data)
    if len(data) < 4 + length:
        raise NbdProtocolError("string runs past the option data")
    return decode_name(data[4 : 4 + length]), data[4 + length :]

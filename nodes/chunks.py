"""Chunk ids and the stored form of a chunk: compressed, optionally encrypted, checked on read.

A chunk's id is BLAKE3 of its plaintext, keyed when the deployment has a key so that
ids reveal nothing about the data. The stored form starts with one format byte::

    format byte  = 0x10 (version 1) | 0x01 if zstd-compressed | 0x02 if encrypted

    plain:       format | body
    encrypted:   format | nonce (12) | AES-256-GCM(body) with its 16-byte tag

    body         = one zstd frame that declares its content size, or the plaintext
                   itself when compression does not make it smaller

The associated data of the AEAD is the format byte and the chunk id, so a stored form
cannot be replayed under another id or flag. The nonce is a keyed BLAKE3 of the id and
the body: the same chunk always has the same stored form on every replica, and a nonce
can only repeat for the very same encrypted body. Deriving it from the id alone would
not be safe: another zstd version or level turns one plaintext into a different body.

The three subkeys (ids, encryption, nonces) are derived from the one 32-byte deployment
key with BLAKE3's key-derivation mode, each under its own context string.
"""

from __future__ import annotations

import hmac
import threading

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nodes.errors import ChunkCorrupted

ID_SIZE = 32
"""Bytes in a chunk id."""
KEY_SIZE = 32
"""Bytes in a deployment key."""
MAX_CHUNK = 16 * 1024 * 1024
"""Default largest plaintext `decode` returns: a bound against decompression bombs."""
NONCE_SIZE = 12
TAG_SIZE = 16

_VERSION = 0x10
_COMPRESSED = 0x01
_ENCRYPTED = 0x02
_ID_CONTEXT = "vmsnap v1 chunk id key"
_CIPHER_CONTEXT = "vmsnap v1 chunk encryption key"
_NONCE_CONTEXT = "vmsnap v1 chunk nonce key"


def derive_key(key: bytes, context: str) -> bytes:
    """A 32-byte subkey of `key` for one purpose, named by `context`."""
    return blake3.blake3(key, derive_key_context=context).digest()


def is_zero(plaintext: bytes) -> bool:
    """True when every byte is zero (such chunks are holes, never stored)."""
    if not plaintext:
        return True
    if plaintext[0] or plaintext[-1]:
        return False
    return plaintext == bytes(len(plaintext))


class ChunkCodec:
    """Turns plaintext chunks into ids and stored forms, and stored forms back, verified.

    Safe to share between threads: each thread gets its own zstd contexts.
    """

    is_zero = staticmethod(is_zero)

    def __init__(self, key: bytes | None = None, level: int = 1) -> None:
        if key is not None and len(key) != KEY_SIZE:
            raise ValueError(f"a deployment key is {KEY_SIZE} bytes, not {len(key)}")
        self.level = level
        self._id_key = derive_key(key, _ID_CONTEXT) if key is not None else None
        self._nonce_key = derive_key(key, _NONCE_CONTEXT) if key is not None else None
        self._aead = AESGCM(derive_key(key, _CIPHER_CONTEXT)) if key is not None else None
        self._local = threading.local()

    @property
    def encrypted(self) -> bool:
        """True when chunks are encrypted (and ids keyed)."""
        return self._aead is not None

    def chunk_id(self, plaintext: bytes) -> bytes:
        """The 32-byte id of `plaintext`."""
        if self._id_key is None:
            return blake3.blake3(plaintext).digest()
        return blake3.blake3(plaintext, key=self._id_key).digest()

    def encode(self, plaintext: bytes, chunk_id: bytes | None = None) -> bytes:
        """The stored form of `plaintext` (`chunk_id` saves hashing it again when known)."""
        cid = self.chunk_id(plaintext) if chunk_id is None else chunk_id
        compressed = self._compressor().compress(plaintext)
        if len(compressed) < len(plaintext):
            fmt, body = _VERSION | _COMPRESSED, compressed
        else:
            fmt, body = _VERSION, plaintext
        if self._aead is None or self._nonce_key is None:
            return bytes((fmt,)) + body
        fmt |= _ENCRYPTED
        header = bytes((fmt,))
        nonce = blake3.blake3(cid, key=self._nonce_key).update(body).digest(NONCE_SIZE)
        return header + nonce + self._aead.encrypt(nonce, body, header + cid)

    def decode(self, chunk_id: bytes, stored: bytes, *, max_size: int = MAX_CHUNK) -> bytes:
        """The plaintext of `stored`, checked against `chunk_id`; raises ChunkCorrupted."""
        if not stored:
            raise ChunkCorrupted(chunk_id, "empty stored form")
        fmt = stored[0]
        if fmt & 0xF0 != _VERSION or fmt & ~0xF3:
            raise ChunkCorrupted(chunk_id, f"unknown format byte {fmt:#04x}")
        body = self._open(chunk_id, fmt, stored)
        plaintext = self._inflate(chunk_id, body, max_size) if fmt & _COMPRESSED else body
        if len(plaintext) > max_size:
            raise ChunkCorrupted(chunk_id, f"larger than {max_size} bytes")
        if not hmac.compare_digest(self.chunk_id(plaintext), chunk_id):
            raise ChunkCorrupted(chunk_id, "content does not match its id")
        return plaintext

    def _open(self, chunk_id: bytes, fmt: int, stored: bytes) -> bytes:
        """The body of `stored`, decrypted and authenticated when it is encrypted."""
        encrypted = bool(fmt & _ENCRYPTED)
        if self._aead is None:
            if encrypted:
                raise ChunkCorrupted(chunk_id, "encrypted, and this codec has no key")
            return stored[1:]
        if not encrypted:
            raise ChunkCorrupted(chunk_id, "not encrypted, and this codec requires it")
        if len(stored) < 1 + NONCE_SIZE + TAG_SIZE:
            raise ChunkCorrupted(chunk_id, "too short for an encrypted chunk")
        nonce = stored[1 : 1 + NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, stored[1 + NONCE_SIZE :], stored[:1] + chunk_id)
        except InvalidTag as err:
            raise ChunkCorrupted(chunk_id, "authentication failed (tampered or wrong key)") from err

    def _inflate(self, chunk_id: bytes, body: bytes, max_size: int) -> bytes:
        """Decompress one zstd frame whose declared size is at most `max_size`."""
        try:
            size = zstandard.frame_content_size(body)
            if size < 0 or size > max_size:
                raise ChunkCorrupted(chunk_id, f"declared size {size} outside 0..{max_size}")
            inflater = self._decompressor().decompressobj()
            plaintext = inflater.decompress(body)
        except zstandard.ZstdError as err:
            raise ChunkCorrupted(chunk_id, f"bad zstd frame: {err}") from err
        if not inflater.eof or inflater.unused_data or len(plaintext) != size:
            raise ChunkCorrupted(chunk_id, "zstd frame is truncated or has trailing bytes")
        return plaintext

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            self._local.compressor = compressor
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        inflater: zstandard.ZstdDecompressor | None = getattr(self._local, "decompressor", None)
        if inflater is None:
            inflater = zstandard.ZstdDecompressor()
            self._local.decompressor = inflater
        return inflater

"""The deployment's data key: its file, its fingerprint, and the key checks on backup nodes.

``data.key`` holds 32 random bytes as hex. Chunk ids, chunk encryption and nonces derive
from it (``nodes/chunks.py``); losing it loses every encrypted snapshot.

The **fingerprint** names a key without revealing it: the first 16 bytes of BLAKE3 in
key-derivation mode under its own context, shown as 32 hex digits. Knowing it does not
help to find the key, nor any of the subkeys that protect chunks.

A **key check** records, on each backup node, which key wrote the chunks it holds::

    data/nodes/backup-N/key-check.json   {"version": 1, "fingerprint": "<32 hex>",
                                          "cipher": "AES-256-GCM"}

It is written with the node's first stored chunk when encryption is on. A backup node
refuses to start with a different key, and ``vmsnap key import`` refuses to replace a key
that data was written with: mixing keys in one cluster would leave snapshots that no
single key opens.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from ledger.errors import ConfigError, InputError
from nodes.chunks import KEY_SIZE, derive_key
from nodes.private_files import write_private

CIPHER = "AES-256-GCM"
CHECK_FILE = "key-check.json"
CHECK_VERSION = 1
_FINGERPRINT_CONTEXT = "vmsnap v1 data key fingerprint"


class DataKeyMismatch(InputError):
    """Data on a backup node was written with another key than the one configured."""

    def __init__(self, node: str, written: str, configured: str) -> None:
        super().__init__(
            f"{node} holds data written with data key {written}, but data.key is "
            f"{configured}: restore the right key with vmsnap key import"
        )


def generate() -> bytes:
    """A new random data key."""
    return secrets.token_bytes(KEY_SIZE)


def fingerprint(key: bytes) -> str:
    """The key's public name: 32 hex digits that reveal nothing about it."""
    return derive_key(key, _FINGERPRINT_CONTEXT)[:16].hex()


def key_text(key: bytes) -> bytes:
    """The contents of a data key file."""
    return key.hex().encode() + b"\n"


def parse_key(text: str) -> bytes:
    """A key from the text of a data key file; ConfigError when it is not one."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as err:
        raise ConfigError("data key", "the data key file does not hold hex") from err
    if len(key) != KEY_SIZE:
        raise ConfigError("data key", f"the data key must be {KEY_SIZE} bytes")
    return key


def read_key(path: Path) -> bytes | None:
    """The key in `path`, or None when there is no such file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("data key", f"cannot read {path}") from err
    return parse_key(text)


def write_key(path: Path, key: bytes, *, replace: bool = False) -> None:
    """Write `key` to `path` (mode 0600, atomically)."""
    write_private(path, key_text(key), replace=replace)


def read_check(node_dir: Path) -> str | None:
    """The fingerprint of the key that wrote a backup node's chunks, or None."""
    path = node_dir / CHECK_FILE
    try:
        body = json.loads(path.read_text())
        found = body["fingerprint"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(str(path), "not a key check file") from err
    if not isinstance(found, str):
        raise ConfigError(str(path), "not a key check file")
    return found


def record_check(node_dir: Path, key_fingerprint: str) -> None:
    """Record on a backup node which key its chunks are written with."""
    body = {"version": CHECK_VERSION, "fingerprint": key_fingerprint, "cipher": CIPHER}
    write_private(node_dir / CHECK_FILE, json.dumps(body).encode() + b"\n", replace=True)


def check_node(node: str, node_dir: Path, key: bytes | None) -> bool:
    """Refuse a key other than the one that wrote the node's data; True when recorded."""
    if key is None:
        return False
    written = read_check(node_dir)
    if written is None:
        return False
    if written != fingerprint(key):
        raise DataKeyMismatch(node, written, fingerprint(key))
    return True

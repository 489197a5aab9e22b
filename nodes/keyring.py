"""What an operator does with the data key: show it by fingerprint, export it, import it.

The key itself never leaves these functions except into a private file: `show` gives
its fingerprint, `export` writes it wrapped (``nodes/key_export.py``), and `import_key`
writes ``data.key`` only after checking that no backup node holds data another key
wrote (their key checks, ``nodes/data_key.py``) and that no node is running with the
key it would replace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.errors import Conflict, InputError
from nodes import network
from nodes.config import Config
from nodes.data_key import CIPHER, fingerprint, read_check, read_key, write_key
from nodes.key_export import ExportedKey, export_key
from nodes.peers import node_names
from nodes.private_files import exposure, write_private


class KeyInUse(Conflict):
    """The data key cannot be replaced: data was written with it, or nodes run with it."""


@dataclass(frozen=True)
class Imported:
    """What `import_key` did."""

    fingerprint: str
    changed: bool
    replaced: str | None


def show(config: Config) -> dict[str, Any]:
    """The data key by fingerprint, the cipher, whether encryption is on, and the key checks."""
    path = config.data_key_path
    key = read_key(path)
    checks = written_with(config)
    return {
        "key_file": str(path),
        "fingerprint": fingerprint(key) if key is not None else None,
        "cipher": CIPHER,
        "encryption": config.storage.encryption,
        "exposed": exposure(path),
        "written_with": checks,
    }


def written_with(config: Config) -> dict[str, str | None]:
    """Each backup node's key check: the fingerprint of the key that wrote its data."""
    return {name: read_check(config.node_dir(name)) for name in node_names(config, "backup")}


def export(config: Config, target: Path, passphrase: bytes | None) -> str:
    """Write the data key to `target` (a new file, mode 0600); return its fingerprint."""
    key = read_key(config.data_key_path)
    if key is None:
        raise InputError(f"no data key at {config.data_key_path}")
    if not target.parent.is_dir():
        raise InputError(f"no folder {target.parent} for the key file")
    write_private(target, export_key(key, passphrase))
    return fingerprint(key)


def read_export(source: Path) -> ExportedKey:
    """Parse an exported key file (its passphrase is asked for afterwards, if it has one)."""
    try:
        blob = source.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {source}: {err.strerror}") from err
    return ExportedKey.parse(blob)


def import_key(config: Config, exported: ExportedKey, passphrase: bytes | None) -> Imported:
    """Make `exported` the deployment's data key, unless data was written with another."""
    key = exported.open(passphrase)
    new = fingerprint(key)
    current = read_key(config.data_key_path)
    if current is not None and fingerprint(current) == new:
        return Imported(new, changed=False, replaced=None)
    running = network.running(config)
    if running:
        raise KeyInUse(f"nodes are running ({', '.join(running)}): stop them with vmsnap down")
    for node, written in written_with(config).items():
        if written is not None and written != new:
            raise KeyInUse(
                f"{node} holds data written with data key {written}, not {new}: "
                "the key was not replaced"
            )
    write_key(config.data_key_path, key, replace=True)
    return Imported(new, changed=True, replaced=fingerprint(current) if current else None)

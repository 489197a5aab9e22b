"""Exported data keys: the deployment's data key, wrapped with a passphrase, in one file.

An exported key is one UTF-8 JSON object::

    {"format": "vmsnap data key", "version": 1,
     "fingerprint": "<32 hex>",           the key's fingerprint (nodes/data_key.py)
     "cipher": "AES-256-GCM",
     "kdf": {"name": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": "<32 hex>"},
     "nonce": "<24 hex>",
     "key": "<96 hex>",                   AES-256-GCM(scrypt(passphrase), nonce, data key)
     "checksum": "<64 hex>"}              BLAKE3 of every other field, canonical JSON

The AEAD's associated data is the canonical JSON of format, version, fingerprint, cipher
and kdf, so none of them can be changed without the passphrase noticing. The checksum
tells a damaged file (a changed byte anywhere) from a wrong passphrase (the checksum
holds but the tag does not). An explicitly plain export has ``"kdf": null``, no nonce,
and the key itself in ``"key"``; its fingerprint and checksum are still checked.
Canonical JSON here is ``json.dumps(value, sort_keys=True, separators=(",", ":"))``.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ledger.errors import InputError
from nodes.chunks import KEY_SIZE, NONCE_SIZE, TAG_SIZE
from nodes.data_key import CIPHER, fingerprint

FORMAT = "vmsnap data key"
VERSION = 1
SCRYPT_N = 1 << 16
"""Scrypt cost: 64 MiB and about half a second per guess on a server core."""
SCRYPT_R = 8
SCRYPT_P = 1
SALT_SIZE = 16
_MAX_N = 1 << 20
_MAX_R = 32
_MAX_P = 16
_HEADER = ("format", "version", "fingerprint", "cipher", "kdf")


class KeyFileDamaged(InputError):
    """An exported key file is not one, or was changed since it was written."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the key file is damaged: {problem}")


class WrongPassphrase(InputError):
    """The passphrase does not open an intact exported key."""

    def __init__(self) -> None:
        super().__init__("wrong passphrase for the key file")


def canonical(value: Any) -> bytes:
    """The canonical JSON of `value`."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def export_key(key: bytes, passphrase: bytes | None) -> bytes:
    """The exported file of `key`: wrapped with `passphrase`, or plain when it is None."""
    body: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": fingerprint(key),
        "cipher": CIPHER,
        "kdf": None,
    }
    if passphrase is None:
        body["key"] = key.hex()
    else:
        kdf = {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
        body["kdf"] = {**kdf, "salt": secrets.token_bytes(SALT_SIZE).hex()}
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = AESGCM(_derive(passphrase, body["kdf"])).encrypt(nonce, key, _header(body))
        body.update(nonce=nonce.hex(), key=sealed.hex())
    body["checksum"] = blake3.blake3(canonical(body)).hexdigest()
    return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class ExportedKey:
    """A parsed exported key file whose checksum holds; `open` yields the key."""

    body: dict[str, Any]

    @classmethod
    def parse(cls, blob: bytes) -> ExportedKey:
        """Check the file's shape and checksum; KeyFileDamaged when either fails."""
        try:
            body = json.loads(blob)
        except (UnicodeDecodeError, ValueError) as err:
            raise KeyFileDamaged("not JSON") from err
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise KeyFileDamaged("not a vmsnap data key export")
        if body.get("version") != VERSION:
            raise KeyFileDamaged(f"format version {body.get('version')!r} is not {VERSION}")
        claimed = body.pop("checksum", None)
        expected = blake3.blake3(canonical(body)).hexdigest()
        if not isinstance(claimed, str) or not hmac.compare_digest(claimed, expected):
            raise KeyFileDamaged("its checksum does not match its contents")
        if body.get("cipher") != CIPHER:
            raise KeyFileDamaged(f"unknown cipher {body.get('cipher')!r}")
        return cls(body)

    @property
    def protected(self) -> bool:
        """True when a passphrase is needed to open the key."""
        return self.body.get("kdf") is not None

    @property
    def fingerprint(self) -> str:
        """The fingerprint the file claims (checked against the key by `open`)."""
        return str(self.body.get("fingerprint"))

    def open(self, passphrase: bytes | None) -> bytes:
        """The data key; WrongPassphrase or KeyFileDamaged when it cannot be had."""
        if self.protected:
            if passphrase is None:
                raise InputError("the key file is protected: a passphrase is needed")
            key = self._unwrap(passphrase)
        else:
            key = _hex(self.body, "key", KEY_SIZE)
        if not hmac.compare_digest(fingerprint(key), self.fingerprint):
            raise KeyFileDamaged("the key does not match its fingerprint")
        return key

    def _unwrap(self, passphrase: bytes) -> bytes:
        kdf = self.body["kdf"]
        nonce = _hex(self.body, "nonce", NONCE_SIZE)
        sealed = _hex(self.body, "key", KEY_SIZE + TAG_SIZE)
        try:
            return AESGCM(_derive(passphrase, kdf)).decrypt(nonce, sealed, _header(self.body))
        except InvalidTag as err:
            raise WrongPassphrase() from err


def _derive(passphrase: bytes, kdf: Any) -> bytes:
    """The wrapping key scrypt derives from `passphrase` with the file's parameters."""
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise KeyFileDamaged("unknown key derivation")
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if not (
        isinstance(n, int)
        and isinstance(r, int)
        and isinstance(p, int)
        and 2 <= n <= _MAX_N
        and n & (n - 1) == 0
        and 1 <= r <= _MAX_R
        and 1 <= p <= _MAX_P
    ):
        raise KeyFileDamaged("scrypt parameters out of range")
    salt = _hex(kdf, "salt", None)
    return Scrypt(salt=salt, length=KEY_SIZE, n=n, r=r, p=p).derive(passphrase)


def _header(body: dict[str, Any]) -> bytes:
    return canonical({name: body.get(name) for name in _HEADER})


def _hex(body: dict[str, Any], name: str, size: int | None) -> bytes:
    value = body.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or (size is not None and len(raw) != size) or not raw:
        raise KeyFileDamaged(f"field {name!r} is missing or malformed")
    return raw

"""Exported data keys: a passphrase opens them, anything else is refused without a key."""

from __future__ import annotations

import json

import blake3
import pytest

from nodes.data_key import fingerprint, generate
from nodes.key_export import (
    ExportedKey,
    KeyFileDamaged,
    WrongPassphrase,
    canonical,
    export_key,
)

KEY = bytes(range(32))
PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(scope="module")
def exported() -> bytes:
    return export_key(KEY, PASSPHRASE)


def _reseal(body: dict[str, object]) -> bytes:
    """A file whose checksum matches its (altered) body, as a forger would write it."""
    body = {k: v for k, v in body.items() if k != "checksum"}
    body["checksum"] = blake3.blake3(canonical(body)).hexdigest()
    return json.dumps(body).encode()


def test_the_passphrase_opens_the_exported_key(exported: bytes) -> None:
    parsed = ExportedKey.parse(exported)
    assert parsed.protected
    assert parsed.fingerprint == fingerprint(KEY)
    assert parsed.open(PASSPHRASE) == KEY


def test_the_exported_file_holds_neither_the_key_nor_the_passphrase(exported: bytes) -> None:
    for secret in (KEY, KEY.hex().encode(), PASSPHRASE):
        assert secret not in exported


def test_a_wrong_passphrase_is_refused_as_such(exported: bytes) -> None:
    with pytest.raises(WrongPassphrase, match=r"^wrong passphrase for the key file$"):
        ExportedKey.parse(exported).open(b"Tr0ub4dor&3")


def test_any_changed_byte_is_reported_as_damage_before_a_passphrase_is_tried(
    exported: bytes,
) -> None:
    text = exported.decode()
    for at, char in enumerate(text):
        if char in '{}":,\n ':
            continue
        altered = text[:at] + ("0" if char != "0" else "1") + text[at + 1 :]
        with pytest.raises(KeyFileDamaged):
            ExportedKey.parse(altered.encode())


def test_a_forged_header_with_a_matching_checksum_fails_authentication(exported: bytes) -> None:
    body = json.loads(exported)
    body["fingerprint"] = fingerprint(generate())
    with pytest.raises(WrongPassphrase):
        ExportedKey.parse(_reseal(body)).open(PASSPHRASE)


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 1 << 30), ("n", 1000), ("r", 0), ("p", 10**6), ("name", "pbkdf2"), ("salt", "zz")],
)
def test_out_of_range_key_derivation_parameters_are_refused(
    exported: bytes, field: str, value: object
) -> None:
    body = json.loads(exported)
    body["kdf"][field] = value
    with pytest.raises(KeyFileDamaged):
        ExportedKey.parse(_reseal(body)).open(PASSPHRASE)


def test_a_plain_export_is_explicit_and_still_checked_against_its_fingerprint() -> None:
    plain = export_key(KEY, None)
    parsed = ExportedKey.parse(plain)
    assert not parsed.protected
    assert json.loads(plain)["kdf"] is None
    assert parsed.open(None) == KEY
    body = json.loads(plain)
    body["key"] = generate().hex()
    with pytest.raises(KeyFileDamaged, match="does not match its fingerprint"):
        ExportedKey.parse(_reseal(body)).open(None)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\xff\xfe", b"[]", b'{"format": "something else"}', b'{"format": "vmsnap data key"}'],
    ids=["empty", "not-utf8", "list", "other-format", "no-version"],
)
def test_files_that_are_not_exported_keys_are_refused(blob: bytes) -> None:
    with pytest.raises(KeyFileDamaged):
        ExportedKey.parse(blob)


def test_two_exports_of_one_key_share_its_fingerprint_but_nothing_secret() -> None:
    first, second = json.loads(export_key(KEY, PASSPHRASE)), json.loads(export_key(KEY, PASSPHRASE))
    assert first["fingerprint"] == second["fingerprint"]
    assert first["kdf"]["salt"] != second["kdf"]["salt"]
    assert first["key"] != second["key"]

"""Private files: mode 0600 whatever the umask, written whole or not at all."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.errors import InputError
from nodes.private_files import exposure, exposure_warnings, write_private


@pytest.fixture(params=[0o000, 0o022, 0o277], ids=["umask-000", "umask-022", "umask-277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_file_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    write_private(tmp_path / "key", b"secret bytes")
    assert _mode(tmp_path / "key") == 0o600
    assert (tmp_path / "key").read_bytes() == b"secret bytes"


def test_a_replaced_private_file_is_0600_even_over_an_open_one(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_private(target, b"new", replace=True)
    assert (_mode(target), target.read_bytes()) == (0o600, b"new")


def test_a_new_private_file_never_overwrites_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        write_private(target, b"other")
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_exposure_names_group_and_others_and_ignores_a_private_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_private(target, b"k")
    assert exposure(target) is None
    target.chmod(0o640)
    assert exposure(target) == "open to group (mode 0640)"
    target.chmod(0o604)
    assert exposure(target) == "open to others (mode 0604)"
    target.chmod(0o644)
    (line,) = exposure_warnings([target, tmp_path / "absent"])
    assert (
        line == f"warning: {target} is open to group and others (mode 0644): run chmod 600 {target}"
    )


def test_a_folder_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "key"
    with pytest.raises(InputError) as raised:
        write_private(target, b"k")
    assert raised.value.message == f"cannot write {target}: No such file or directory"

"""Files only their owner may read: the deployment's secret, keys and exported key files.

Every such file is written the same way: into a temporary file that ``mkstemp`` creates
with mode 0600 in the target's own folder (so no umask can widen it, and no reader ever
sees it world-readable or half written), fsynced, then linked (a new file: refused when
the name exists) or renamed (a replacement) into place, and the folder fsynced.

A private file whose mode lets its group or others read it is reported, not refused:
operators who share a deployment through a group may do so on purpose, and `vmsnap
status`, `vmsnap up` and `vmsnap key show` name every such file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ledger.errors import InputError

PRIVATE_MODE = 0o600


def write_private(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to `path`, mode 0600, atomically; an existing file only if `replace`."""
    try:
        _write(path, data, replace)
    except FileExistsError as err:
        raise InputError(f"{path} already exists") from err
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from err


def _write(path: Path, data: bytes, replace: bool) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, PRIVATE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            tmp.replace(path)
        else:
            path.hardlink_to(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exposure(path: Path) -> str | None:
    """Why `path` is not private ("open to group and others (mode 0644)"), or None."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    who = [name for bits, name in ((0o070, "group"), (0o007, "others")) if mode & bits]
    if not who:
        return None
    return f"open to {' and '.join(who)} (mode {mode:04o})"


def exposure_warnings(paths: list[Path]) -> list[str]:
    """One warning line for each of `paths` its group or others can reach."""
    warnings = []
    for path in paths:
        problem = exposure(path)
        if problem is not None:
            warnings.append(f"warning: {path} is {problem}: run chmod 600 {path}")
    return warnings

"""The VM model: names, types, addresses and disks, validated before anything is recorded."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from ledger.errors import InputError
from ledger.events import Disk, VmRegistered
from ledger.sizes import parse_size

DISK_ROLES = ("system", "data")
SECTOR = 512
MAX_DISK = (1 << 63) - SECTOR
_HOST = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_TYPE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_RESOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_disk(text: str) -> Disk:
    """Parse ``ROLE:RESOURCE_ID:SIZE`` (for example ``system:root:20G``)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise InputError(f"invalid disk {text!r}: use ROLE:RESOURCE_ID:SIZE, e.g. system:root:20G")
    role, resource_id, size_text = parts
    return disk(role, resource_id, parse_size(size_text))


def disk(role: str, resource_id: str, size: int) -> Disk:
    """Return a validated disk."""
    if role not in DISK_ROLES:
        raise InputError(f"invalid disk role {role!r}: use one of {', '.join(DISK_ROLES)}")
    check_resource_id(resource_id)
    check_disk_size(resource_id, size)
    return Disk(role=role, resource_id=resource_id, size=size)


def check_resource_id(resource_id: str) -> str:
    """A disk's resource id: also a folder name on the business node, so never a path."""
    if not _RESOURCE.fullmatch(resource_id):
        raise InputError(
            f"invalid resource id {resource_id!r}: letters, digits, '.', '_' and '-', up to 128"
        )
    return resource_id


def check_disk_size(resource_id: str, size: int) -> int:
    """A disk size: a positive multiple of the sector size, at most 8 EiB."""
    if size > MAX_DISK:
        raise InputError(f"invalid size for disk {resource_id}: larger than 8 EiB")
    if size <= 0 or size % SECTOR:
        raise InputError(
            f"invalid size for disk {resource_id}: {size} is not a positive multiple of {SECTOR}"
        )
    return size


def check_vm_name(name: str) -> str:
    """A VM name: a host name (also a folder name on the business node)."""
    if not _HOST.fullmatch(name):
        raise InputError(
            f"invalid VM name {name!r}: it must be a host name (letters, digits, '-', '.')"
        )
    return name


def registration(
    name: str, vm_type: str, ip: str, disks: Sequence[Disk], at_ms: int
) -> VmRegistered:
    """Return the event that registers a VM, after checking every field."""
    check_vm_name(name)
    if not _TYPE.fullmatch(vm_type):
        raise InputError(f"invalid VM type {vm_type!r}: a lowercase word such as kvm")
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise InputError(f"invalid IP address {ip!r}") from None
    if not disks:
        raise InputError("a VM needs at least one disk: --disk system:root:20G")
    checked = tuple(disk(d.role, d.resource_id, d.size) for d in disks)
    ids = [d.resource_id for d in checked]
    if len(set(ids)) != len(ids):
        raise InputError("each disk of a VM needs its own resource id")
    if sum(d.role == "system" for d in checked) > 1:
        raise InputError("a VM has at most one system disk")
    return VmRegistered(at_ms=at_ms, vm=name, vm_type=vm_type, ip=str(address), disks=checked)

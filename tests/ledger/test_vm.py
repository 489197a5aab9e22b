from __future__ import annotations

import pytest

from ledger import vm
from ledger.errors import InputError
from ledger.events import Disk, VmRegistered

ROOT = Disk(role="system", resource_id="root", size=20 << 30)
DATA = Disk(role="data", resource_id="srv.img", size=100 << 30)


@pytest.mark.parametrize(
    ("text", "disk"),
    [
        ("system:root:20G", Disk("system", "root", 20 << 30)),
        ("data:srv.img:512", Disk("data", "srv.img", 512)),
        ("data:vol_2-b:1.5T", Disk("data", "vol_2-b", 3 << 39)),
        ("system:" + "r" * 128 + ":1M", Disk("system", "r" * 128, 1 << 20)),
    ],
)
def test_parse_disk_reads_role_resource_id_and_size(text: str, disk: Disk) -> None:
    assert vm.parse_disk(text) == disk


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("system:root", "invalid disk 'system:root'"),
        ("system:root:1G:x", "invalid disk"),
        ("", "invalid disk"),
        ("boot:root:1G", "invalid disk role 'boot'"),
        ("System:root:1G", "invalid disk role"),
        ("system::1G", "invalid resource id ''"),
        ("system:-root:1G", "invalid resource id"),
        ("system:ro/ot:1G", "invalid resource id"),
        ("system:" + "r" * 129 + ":1G", "invalid resource id"),
        ("system:root\n:1G", "invalid resource id"),
        ("system:root:1000", "invalid size for disk root: 1000"),
        ("system:root:0", "invalid size for disk root: 0"),
        ("system:root:10Q", "invalid size '10Q'"),
        ("system:root:1.3", "invalid size '1.3'"),
    ],
)
def test_parse_disk_refuses_with_a_one_line_input_error(text: str, complaint: str) -> None:
    with pytest.raises(InputError) as caught:
        vm.parse_disk(text)

    assert caught.value.message.startswith(complaint)
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == 2


def test_registration_builds_the_event_from_checked_fields() -> None:
    event = vm.registration("web-01", "kvm", "10.0.0.11", [ROOT, DATA], at_ms=1234)

    assert event == VmRegistered(
        at_ms=1234, vm="web-01", vm_type="kvm", ip="10.0.0.11", disks=(ROOT, DATA)
    )
    assert event.stream == "vm/web-01"


@pytest.mark.parametrize(
    ("ip", "stored"),
    [("192.168.1.7", "192.168.1.7"), ("FE80::0001", "fe80::1"), ("2001:DB8:0:0::1", "2001:db8::1")],
)
def test_registration_stores_the_address_in_its_normal_form(ip: str, stored: str) -> None:
    assert vm.registration("web", "kvm", ip, [ROOT], at_ms=1).ip == stored


@pytest.mark.parametrize("name", ["web", "web-01", "db.lan.example", "a", "A1", "x" * 63])
def test_registration_takes_host_names(name: str) -> None:
    assert vm.registration(name, "kvm", "10.0.0.1", [ROOT], at_ms=1).vm == name


@pytest.mark.parametrize(
    ("name", "vm_type", "ip", "disks", "complaint"),
    [
        pytest.param("bad_host", "kvm", "10.0.0.1", [ROOT], "invalid VM name", id="underscore"),
        pytest.param("-web", "kvm", "10.0.0.1", [ROOT], "invalid VM name", id="leading-dash"),
        pytest.param("web-", "kvm", "10.0.0.1", [ROOT], "invalid VM name", id="trailing-dash"),
        pytest.param("web..lan", "kvm", "10.0.0.1", [ROOT], "invalid VM name", id="empty-label"),
        pytest.param("x" * 64, "kvm", "10.0.0.1", [ROOT], "invalid VM name", id="long-label"),
        pytest.param("", "kvm", "10.0.0.1", [ROOT], "invalid VM name", id="empty-name"),
        pytest.param("web\n", "kvm", "10.0.0.1", [ROOT], "invalid VM name", id="name-newline"),
        pytest.param("web", "KVM", "10.0.0.1", [ROOT], "invalid VM type", id="upper-type"),
        pytest.param("web", "1kvm", "10.0.0.1", [ROOT], "invalid VM type", id="digit-type"),
        pytest.param("web", "", "10.0.0.1", [ROOT], "invalid VM type", id="empty-type"),
        pytest.param("web", "kvm\n", "10.0.0.1", [ROOT], "invalid VM type", id="type-newline"),
        pytest.param("web", "kvm", "10.0.0.500", [ROOT], "invalid IP address", id="octet"),
        pytest.param("web", "kvm", "10.0.0", [ROOT], "invalid IP address", id="short-ip"),
        pytest.param("web", "kvm", "", [ROOT], "invalid IP address", id="empty-ip"),
        pytest.param("web", "kvm", "gateway.lan", [ROOT], "invalid IP address", id="ip-name"),
        pytest.param("web", "kvm", "10.0.0.1", [], "a VM needs at least one disk", id="no-disk"),
        pytest.param(
            "web",
            "kvm",
            "10.0.0.1",
            [ROOT, Disk("data", "root", 512)],
            "each disk of a VM needs its own resource id",
            id="duplicate-resource-id",
        ),
        pytest.param(
            "web",
            "kvm",
            "10.0.0.1",
            [ROOT, Disk("system", "boot", 512)],
            "a VM has at most one system disk",
            id="two-system-disks",
        ),
        pytest.param(
            "web",
            "kvm",
            "10.0.0.1",
            [Disk("system", "root", 1000)],
            "invalid size for disk root",
            id="size-not-sector-multiple",
        ),
        pytest.param(
            "web",
            "kvm",
            "10.0.0.1",
            [Disk("swap", "root", 512)],
            "invalid disk role 'swap'",
            id="unknown-role",
        ),
    ],
)
def test_registration_refuses_with_a_one_line_input_error(
    name: str, vm_type: str, ip: str, disks: list[Disk], complaint: str
) -> None:
    with pytest.raises(InputError) as caught:
        vm.registration(name, vm_type, ip, disks, at_ms=1)

    assert caught.value.message.startswith(complaint)
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == 2

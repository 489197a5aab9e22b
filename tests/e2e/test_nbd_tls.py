"""A business node's NBD over TLS on a running network, and its refusal to expose plaintext."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Deployment, make_deployment
from tests.e2e.qemu import tool
from tests.nodes.certs import Authority, write_client, write_server

pytestmark = pytest.mark.slow
VM = "tls-01"


def configure(deployment: Deployment, **nbd: str) -> None:
    """Set keys of the [nbd] section of the deployment's vmsnap.toml."""
    head, section = deployment.config.read_text().split("\n[nbd]\n", 1)
    section, rest = section.split("\n[", 1)
    for key, value in nbd.items():
        default = next(line for line in section.splitlines() if line.startswith(f"{key} = "))
        section = section.replace(default, f"{key} = {value}", 1)
    deployment.config.write_text(f"{head}\n[nbd]\n{section}\n[{rest}")


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Path]:
    root = tmp_path_factory.mktemp("nbd-pki")
    ca = Authority.create()
    return ca, write_client(root / "client", ca, trust=ca)


@pytest.fixture(scope="module")
def net(
    tmp_path_factory: pytest.TempPathFactory, clients: tuple[Authority, Path]
) -> Iterator[Deployment]:
    ca, _client = clients
    deployment = make_deployment(tmp_path_factory.mktemp("nbdtls") / "deployment")
    write_server(deployment.root / "nbd", ca)
    configure(
        deployment,
        tls_cert='"nbd/server-cert.pem"',
        tls_key='"nbd/server-key.pem"',
        tls_ca='"nbd/ca-cert.pem"',
    )
    deployment.ok("up")
    try:
        deployment.ok("vm", "register", VM, "--ip", "10.0.0.71", "--disk", "system:root:8M")
        yield deployment
    finally:
        deployment.run("down")


def qemu_io_tls(creds: Path, port: int, *commands: str) -> subprocess.CompletedProcess[str]:
    args = [
        tool("qemu-io"),
        "--object",
        f"tls-creds-x509,id=tls0,dir={creds},endpoint=client",
        "--image-opts",
        f"driver=nbd,host=127.0.0.1,port={port},export={VM}/root,tls-creds=tls0",
    ]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_disk_url_says_tls_and_qemu_io_writes_through_it(
    net: Deployment, clients: tuple[Authority, Path], tmp_path: Path
) -> None:
    located = net.json("disk", "url", VM, "root")
    port = int(located["url"].split(":")[2].split("/")[0])

    done = qemu_io_tls(clients[1], port, "write -P 0x6b 0 256k", "flush", "read -P 0x6b 0 256k")

    assert located["tls"] is True
    assert located["url"].startswith("nbd://127.0.0.1:")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pattern verification failed" not in done.stdout
    taken = net.json("snapshot", "create", VM)
    out = tmp_path / "snap.raw"
    net.ok("disk", "export", VM, "root", str(out), "--snapshot", taken["id"])
    assert out.read_bytes()[: 256 * 1024] == b"\x6b" * (256 * 1024)


def test_a_plaintext_client_of_the_business_node_is_refused(net: Deployment) -> None:
    before = net.json("disk", "url", VM, "root")
    done = subprocess.run(
        [tool("qemu-io"), "-f", "raw", "-c", "write -P 0x01 0 4k", before["url"]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode != 0
    assert "TLS" in done.stdout + done.stderr


def test_plaintext_nbd_off_loopback_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "exposed")
    configure(deployment, host='"0.0.0.0"')

    started = deployment.run("up")

    assert started.exit_code == 3, started.output
    assert started.output.count("\n") == 1
    assert "business-1 exited at start" in started.output
    assert "configuration nbd.host: serving NBD on 0.0.0.0 without TLS" in started.output
    assert {row["state"] for row in deployment.json("status")} == {"down"}


def test_plaintext_nbd_off_loopback_starts_when_explicitly_allowed(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path / "trusted")
    configure(deployment, host='"0.0.0.0"', allow_plaintext="true")
    try:
        deployment.ok("up")
        deployment.ok("vm", "register", VM, "--ip", "10.0.0.72", "--disk", "system:root:4M")
        located = deployment.json("disk", "url", VM, "root")
        assert located["url"].startswith("nbd://0.0.0.0:")
        assert located["tls"] is False
    finally:
        deployment.run("down")

"""NBD over TLS (NBD_OPT_STARTTLS), driven by qemu-io and qemu-img as TLS clients.

The certificates are made in the test (tests/nodes/certs.py); the device is the in-memory
one of test_nbd.py, since what is under test is the handshake, not the volume.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.errors import ConfigError
from nodes.nbd_tls import check_exposure, is_loopback, server_context
from tests.nodes.certs import Authority, write_client, write_server
from tests.nodes.test_nbd import (
    BLOCK,
    CMD_READ,
    HOST,
    IHAVEOPT,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    REP_ACK,
    REP_ERR_INVALID,
    REP_ERR_UNSUP,
    REP_INFO,
    REQUEST_MAGIC,
    SIMPLE_MAGIC,
    MemoryDevice,
    MiB,
    Qemu,
    RawClient,
    ServerThread,
    _string,
    require_tool,
)

OPT_LIST, OPT_STARTTLS = 3, 5
REP_ERR_TLS_REQD = 2**31 + 5


@dataclass(frozen=True)
class Pki:
    """A CA, the server's files, and client folders as QEMU reads them."""

    ca: Authority
    cert: Path
    key: Path
    ca_file: Path
    client: Path
    anonymous: Path
    stranger: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = Authority.create(), Authority.create("another CA")
    cert, key, ca_file = write_server(root / "server", ca)
    return Pki(
        ca,
        cert,
        key,
        ca_file,
        client=write_client(root / "client", ca, trust=ca),
        anonymous=write_client(root / "anonymous", ca, trust=ca, with_cert=False),
        stranger=write_client(root / "stranger", other, trust=ca),
    )


@pytest.fixture(scope="module")
def qemu() -> Qemu:
    return Qemu(require_tool("qemu-io"), require_tool("qemu-img"), require_tool("qemu-nbd"))


@pytest.fixture
def disk() -> MemoryDevice:
    return MemoryDevice(4 * MiB)


def serve(disk: MemoryDevice, context: ssl.SSLContext | None) -> Iterator[ServerThread]:
    server = ServerThread({"disk": disk}, tls=context)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tls_nbd(disk: MemoryDevice, pki: Pki) -> Iterator[ServerThread]:
    """A server requiring TLS and a client certificate from the test CA."""
    yield from serve(disk, server_context(pki.cert, pki.key, pki.ca_file))


@pytest.fixture
def plain_nbd(disk: MemoryDevice) -> Iterator[ServerThread]:
    yield from serve(disk, None)


def tls_args(creds: Path, port: int) -> list[str]:
    """qemu's options for an NBD export over TLS with the credentials in `creds`."""
    return [
        "--object",
        f"tls-creds-x509,id=tls0,dir={creds},endpoint=client",
        "--image-opts",
        f"driver=nbd,host={HOST},port={port},export=disk,tls-creds=tls0",
    ]


def qemu_io_tls(
    qemu: Qemu, creds: Path, port: int, *commands: str
) -> subprocess.CompletedProcess[str]:
    args = [qemu.io_path, *tls_args(creds, port), *(a for c in commands for a in ("-c", c))]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def client_context(pki: Pki, with_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_file)
    if with_cert:
        context.load_cert_chain(pki.client / "client-cert.pem", pki.client / "client-key.pem")
    return context


def starttls(client: RawClient, context: ssl.SSLContext) -> None:
    """Ask for TLS and switch the raw client's socket to it."""
    client.option(OPT_STARTTLS)
    assert client.option_reply(OPT_STARTTLS) == (REP_ACK, b"")
    client.sock = context.wrap_socket(client.sock, server_hostname=HOST)


def go(client: RawClient) -> int:
    """Send NBD_OPT_GO for the export; return the first reply's type."""
    client.option(OPT_GO, _string(b"disk") + struct.pack(">H", 0))
    return client.option_reply(OPT_GO)[0]


def test_qemu_io_writes_and_reads_back_a_pattern_over_tls(
    qemu: Qemu, tls_nbd: ServerThread, pki: Pki, disk: MemoryDevice
) -> None:
    done = qemu_io_tls(
        qemu, pki.client, tls_nbd.port, "write -P 0x5a 64k 128k", "read -P 0x5a 64k 128k"
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pattern verification failed" not in done.stdout
    assert bytes(disk.data[64 * 1024 : 192 * 1024]) == b"\x5a" * (128 * 1024)


def test_an_image_round_trips_through_qemu_img_over_tls(
    qemu: Qemu, tls_nbd: ServerThread, pki: Pki, disk: MemoryDevice, tmp_path: Path
) -> None:
    image, back = tmp_path / "in.raw", tmp_path / "out.raw"
    image.write_bytes(bytes(range(256)) * (4 * MiB // 256))
    creds = f"tls-creds-x509,id=tls0,dir={pki.client},endpoint=client"
    target = f"driver=nbd,host={HOST},port={tls_nbd.port},export=disk,tls-creds=tls0"

    put = qemu.img(
        "convert", "--object", creds, "-n", "-f", "raw", str(image), "--target-image-opts", target
    )
    get = qemu.img("convert", "--object", creds, "--image-opts", target, "-O", "raw", str(back))

    assert put.returncode == 0, put.stderr
    assert get.returncode == 0, get.stderr
    assert bytes(disk.data) == image.read_bytes()
    assert back.read_bytes() == image.read_bytes()


def test_a_plaintext_client_is_refused_when_tls_is_required(
    qemu: Qemu, tls_nbd: ServerThread, disk: MemoryDevice
) -> None:
    done = qemu.io(tls_nbd.url(), "write -P 0x11 0 4k")

    assert done.returncode != 0
    assert "TLS" in done.stdout + done.stderr
    assert bytes(disk.data) == bytes(disk.size)
    assert [c for c in disk.calls if c[0] == "write"] == []


def test_a_client_without_a_certificate_is_refused_when_the_ca_is_required(
    qemu: Qemu, tls_nbd: ServerThread, pki: Pki, disk: MemoryDevice
) -> None:
    done = qemu_io_tls(qemu, pki.anonymous, tls_nbd.port, "write -P 0x22 0 4k")

    assert done.returncode != 0
    assert bytes(disk.data) == bytes(disk.size)


def test_a_client_certificate_from_another_ca_is_refused(
    qemu: Qemu, tls_nbd: ServerThread, pki: Pki, disk: MemoryDevice
) -> None:
    done = qemu_io_tls(qemu, pki.stranger, tls_nbd.port, "write -P 0x33 0 4k")

    assert done.returncode != 0
    assert bytes(disk.data) == bytes(disk.size)


def test_without_a_ca_any_tls_client_is_served(qemu: Qemu, disk: MemoryDevice, pki: Pki) -> None:
    for server in serve(disk, server_context(pki.cert, pki.key)):
        done = qemu_io_tls(qemu, pki.anonymous, server.port, "write -P 0x44 0 4k")
        assert done.returncode == 0, done.stdout + done.stderr
    assert bytes(disk.data[:4096]) == b"\x44" * 4096


@pytest.mark.parametrize("option", [OPT_GO, OPT_LIST])
def test_options_before_starttls_get_tls_required(tls_nbd: ServerThread, option: int) -> None:
    with RawClient(tls_nbd.port) as client:
        client.greet()
        payload = _string(b"disk") + struct.pack(">H", 0) if option == OPT_GO else b""
        client.option(option, payload)
        reply_type, message = client.option_reply(option)
        client.option(OPT_ABORT)
        assert client.option_reply(OPT_ABORT)[0] == REP_ACK

    assert reply_type == REP_ERR_TLS_REQD
    assert b"TLS is required" in message


def test_export_name_before_starttls_ends_the_session(
    tls_nbd: ServerThread, disk: MemoryDevice
) -> None:
    with RawClient(tls_nbd.port) as client:
        client.greet()
        client.option(OPT_EXPORT_NAME, b"disk")
        assert client.sock.recv(1) == b""
    tls_nbd.wait_idle()


def test_starttls_then_go_serves_the_export_inside_tls(
    tls_nbd: ServerThread, pki: Pki, disk: MemoryDevice
) -> None:
    disk.data[:BLOCK] = b"\x77" * BLOCK
    with RawClient(tls_nbd.port) as client:
        client.greet()
        starttls(client, client_context(pki))
        client.option(OPT_STARTTLS)
        again = client.option_reply(OPT_STARTTLS)[0]
        first = go(client)
        while (reply := client.option_reply(OPT_GO))[0] == REP_INFO:
            pass
        client.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 7, 0, BLOCK))
        magic, error, handle = struct.unpack(">IIQ", client.recv(16))
        data = client.recv(BLOCK)

    assert isinstance(client.sock, ssl.SSLSocket)
    assert (again, first, reply[0]) == (REP_ERR_INVALID, REP_INFO, REP_ACK)
    assert (magic, error, handle) == (SIMPLE_MAGIC, 0, 7)
    assert data == b"\x77" * BLOCK


def test_starttls_with_data_is_invalid(tls_nbd: ServerThread) -> None:
    with RawClient(tls_nbd.port) as client:
        client.greet()
        client.option(OPT_STARTTLS, b"x")
        assert client.option_reply(OPT_STARTTLS)[0] == REP_ERR_INVALID


def test_starttls_on_a_server_without_tls_is_unsupported(plain_nbd: ServerThread) -> None:
    with RawClient(plain_nbd.port) as client:
        client.greet()
        client.option(OPT_STARTTLS)
        reply_type, _message = client.option_reply(OPT_STARTTLS)
        assert go(client) == 3  # NBD_REP_INFO: plaintext goes on as before

    assert reply_type == REP_ERR_UNSUP


def test_plaintext_sent_with_starttls_is_never_taken_as_inside_tls(
    tls_nbd: ServerThread, disk: MemoryDevice
) -> None:
    with RawClient(tls_nbd.port) as client:
        client.greet()
        injected = struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 4) + b"disk"
        client.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0) + injected)
        assert client.option_reply(OPT_STARTTLS)[0] == REP_ACK
        assert _closed(client.sock)

    tls_nbd.wait_idle()
    assert disk.calls == []


def _closed(sock: socket.socket) -> bool:
    """True when the server closes the connection without sending anything more."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("10.1.2.3", False),
    ],
)
def test_loopback_addresses_are_told_from_reachable_ones(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plaintext_nbd_on_a_reachable_address_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError) as caught:
        check_exposure("0.0.0.0", tls=False, allow_plaintext=False)

    assert caught.value.message.startswith("configuration nbd.host: serving NBD on 0.0.0.0")
    check_exposure("0.0.0.0", tls=True, allow_plaintext=False)
    check_exposure("0.0.0.0", tls=False, allow_plaintext=True)
    check_exposure("127.0.0.1", tls=False, allow_plaintext=False)


def test_a_missing_certificate_is_one_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        server_context(tmp_path / "nope.pem", tmp_path / "nope.key")

    assert caught.value.message.startswith("configuration [nbd]: cannot load the TLS certificate")

"""Where NBD listens and how it is protected: loopback by default, TLS when bound elsewhere.

NBD carries disk contents and has no authentication of its own. The ``[nbd]``
section of vmsnap.toml decides::

    host = "127.0.0.1"            the address business nodes serve NBD on
    tls_cert = "nbd/server.pem"   server certificate (PEM), with ...
    tls_key = "nbd/server.key"    ... its private key: TLS is then required
    tls_ca = "nbd/ca.pem"         optional: clients must show a certificate this CA signed
    allow_plaintext = false       true: serve without TLS on a non-loopback address anyway

With a certificate, every client must upgrade with NBD_OPT_STARTTLS before any
other option (``nodes.nbd``); without one, a non-loopback ``host`` is refused at
start-up unless ``allow_plaintext`` says the network is trusted.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

from ledger.errors import ConfigError


def server_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context for NBD; with `ca`, clients must present a certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as err:
        raise ConfigError("[nbd]", f"cannot load the TLS certificate or key: {err}") from err
    return context


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "":
        return False  # every interface
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_exposure(host: str, tls: bool, allow_plaintext: bool) -> None:
    """Refuse plaintext NBD on an address other machines can reach, unless allowed."""
    if tls or allow_plaintext or is_loopback(host):
        return
    raise ConfigError(
        "nbd.host",
        f"serving NBD on {host} without TLS would expose the disks; set nbd.tls_cert and"
        " nbd.tls_key, or nbd.allow_plaintext = true on a trusted network",
    )

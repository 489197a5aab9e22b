"""X.509 certificates made for a test: a CA, a server certificate for loopback, client ones.

The files are laid out the way QEMU's ``tls-creds-x509`` object reads a folder:
``ca-cert.pem``, ``server-cert.pem``/``server-key.pem``, ``client-cert.pem``/``client-key.pem``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its key and self-signed certificate."""

    key: Key
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "vmsnap test CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        cert = (
            _builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, name: str, usage: x509.ObjectIdentifier) -> tuple[Key, x509.Certificate]:
        """A leaf certificate for `name` (valid for 127.0.0.1 and localhost) with `usage`."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(_name(name), self.cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return key, cert


def write_server(folder: Path, ca: Authority) -> tuple[Path, Path, Path]:
    """Write the CA and a server certificate and key; return (cert, key, ca) paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = ca.issue("vmsnap nbd server", ExtendedKeyUsageOID.SERVER_AUTH)
    paths = folder / "server-cert.pem", folder / "server-key.pem", folder / "ca-cert.pem"
    _write(paths[0], cert, None)
    _write(paths[1], None, key)
    _write(paths[2], ca.cert, None)
    return paths


def write_client(folder: Path, ca: Authority, trust: Authority, with_cert: bool = True) -> Path:
    """A QEMU client folder trusting `trust`, with a certificate `ca` signed (if `with_cert`)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "ca-cert.pem", trust.cert, None)
    if with_cert:
        key, cert = ca.issue("vmsnap nbd client", ExtendedKeyUsageOID.CLIENT_AUTH)
        _write(folder / "client-cert.pem", cert, None)
        _write(folder / "client-key.pem", None, key)
    return folder


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _builder(subject: x509.Name, issuer: x509.Name, key: Key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, cert: x509.Certificate | None, key: Key | None) -> None:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

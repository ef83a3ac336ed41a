"""TLS for NATS: a development CA and server certificate, and the server's tls block.

``colonies dev --tls`` calls :func:`make_dev_tls`: a CA of its own (ECDSA P-256, valid a
year) signs a certificate for the addresses the server listens on (``localhost``,
``127.0.0.1``, ``::1`` and the ``--host`` given). nats-server then serves clients over
TLS only (:func:`tls_block`), and every component verifies the server's certificate
against the CA (``COLONIES_SERVER_TLS=true``, ``COLONIES_TLS_CA_FILE=<ca.pem>``;
:class:`colonies_es.settings.NatsAccess`). A client without the CA cannot connect.

Production uses certificates from the organisation's CA instead; ``nats.conf`` shows the
same block.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "make_dev_tls", "tls_block"]

VALIDITY = datetime.timedelta(days=365)
HANDSHAKE_TIMEOUT = 2.0
"""Seconds nats-server gives a client to complete the TLS handshake."""


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate and the server certificate and key it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "colonies-es development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``path`` (mode 0600 when ``private``), replacing it atomically."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644
    )
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    temporary.replace(path)


def _alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", "::1", *hosts]):
        if host in ("", "0.0.0.0", "::"):
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_dev_tls(directory: Path, hosts: list[str] | None = None) -> TlsFiles:
    """A CA and a server certificate for ``hosts`` (besides the loopback names) in
    ``directory`` (``ca.pem``, ``server.pem``, ``server-key.pem`` mode 0600). Made once:
    existing files are kept, so clients holding the CA keep working across restarts."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    if files.ca.is_file() and files.cert.is_file() and files.key.is_file():
        return files
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("colonies-es development CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("colonies-es nats-server"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(_alternative_names(list(hosts or [])), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.ca, ca.public_bytes(serialization.Encoding.PEM))
    _write(files.cert, server.public_bytes(serialization.Encoding.PEM))
    _write(
        files.key,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    return files


def tls_block(files: TlsFiles) -> str:
    """The nats-server configuration block serving clients over TLS only."""
    return "\n".join(
        [
            "# TLS (colonies_es/tls.py): clients must use TLS and verify this certificate.",
            "tls {",
            f'  cert_file: "{files.cert}"',
            f'  key_file:  "{files.key}"',
            f"  timeout:   {HANDSHAKE_TIMEOUT:g}",
            "}",
            "",
        ]
    )

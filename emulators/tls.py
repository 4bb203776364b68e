"""Project-local certificate authority for the emulators.

simple-salesforce forces every URL to ``https://`` (fact sheet §1.2), so the emulators must
speak TLS with a certificate the client can verify. We generate a throw-away CA once per
state directory and a server certificate for the loopback names; clients pin ``ca.pem``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "ensure_ca"]

_DNS_NAMES = ("localhost",)
_IP_NAMES = ("127.0.0.1", "::1")
# Renew a little before expiry so a long-lived state dir never serves an expired cert.
_MIN_REMAINING = dt.timedelta(days=7)


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the generated PEM files."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def ensure_ca(directory: Path) -> TlsFiles:
    """Create (or reuse, if present and still valid) a local CA and a loopback server cert."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
    )
    if not _ca_valid(files):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _make_ca_cert(ca_key)
        _write_key(files.ca_key, ca_key)
        _write_cert(files.ca_cert, ca_cert)
        # A fresh CA invalidates any older server cert.
        files.server_cert.unlink(missing_ok=True)
    if not _server_valid(files):
        ca_key_loaded = _load_key(files.ca_key)
        ca_cert_loaded = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = _make_server_cert(server_key, ca_key_loaded, ca_cert_loaded)
        _write_key(files.server_key, server_key)
        _write_cert(files.server_cert, server_cert)
    return files


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fresh(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > _MIN_REMAINING


def _ca_valid(files: TlsFiles) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = _load_key(files.ca_key)
    except (OSError, ValueError):
        return False
    return _fresh(cert) and _same_public_key(cert, key)


def _server_valid(files: TlsFiles) -> bool:
    try:
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        key = _load_key(files.server_key)
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        # Anything unreadable or not signed by the current CA is simply regenerated.
        return False
    have_dns = set(sans.get_values_for_type(x509.DNSName))
    have_ip = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return (
        _fresh(cert)
        and _same_public_key(cert, key)
        and set(_DNS_NAMES) <= have_dns
        and set(_IP_NAMES) <= have_ip
    )


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return cert.public_key().public_bytes(enc, fmt) == key.public_key().public_bytes(enc, fmt)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Private keys are written owner-only; write-then-rename keeps readers from seeing halves.
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _make_ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "frontforce emulator local CA")])
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_server_cert(
    key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> x509.Certificate:
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in _DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _IP_NAMES]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        # Below 398 days so strict TLS stacks accept it as a leaf.
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

"""Throwaway certificate authorities and certificates for the TLS tests (``cryptography``).

:class:`TestCA` makes a self-signed CA; :meth:`TestCA.issue` a leaf certificate for a name,
valid for ``127.0.0.1`` and ``localhost`` as server and client. Files are PEM; private keys are
written 0600 (the gateway refuses anything more open). EC P-256 keys: fast to make, and what
DCMTK's and Orthanc's BCP 195 profiles negotiate (TLS 1.3, or ECDHE-ECDSA with AES-GCM).
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

__all__ = ["Issued", "TestCA", "write_key"]

_DAY = datetime.timedelta(days=1)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, mode: int = 0o600) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, mode)
    return path


@dataclass(frozen=True)
class Issued:
    """A certificate and its key on disk, and its SHA-256 fingerprint (lowercase hex)."""

    cert: Path
    key: Path
    sha256: str


class TestCA:
    """A self-signed certificate authority in ``folder`` (``<name>-ca.crt``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, name: str = "test") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.name = folder, name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        self.cert = folder / f"{name}-ca.crt"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, stem: str | None = None, *, hosts: tuple[str, ...] = (
            "127.0.0.1", "localhost")) -> Issued:
        """A leaf certificate ``<stem>.crt`` / ``<stem>.key`` with CN ``cn`` and ``hosts`` as
        subject alternative names (IP addresses where they parse as one)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))
        stem = stem or f"{self.name}-{cn}"
        cert_path = self.folder / f"{stem}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        sha256 = cert.fingerprint(hashes.SHA256()).hex()
        return Issued(cert_path, write_key(self.folder / f"{stem}.key", key), sha256)

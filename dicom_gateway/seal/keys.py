"""Gateway and partner keys: files, ids, permissions.

Gateway identity (``keys init``): ``gateway-signing.key`` (Ed25519, PKCS#8 PEM), its public half
``gateway-signing.pub`` (what partners get), and ``uid-secret.key`` (32 random bytes, hex: the
key of the keyed UID derivation). Partner keys (``keys partner``): ``NAME.key`` / ``NAME.pub``,
JSON documents holding an HPKE key pair (RFC 9180), suite ``x25519`` (DHKEM(X25519,
HKDF-SHA256), HKDF-SHA256, AES-256-GCM) or the hybrid ``mlkem768-x25519`` (ML-KEM-768 +
X25519, same KDF and AEAD). A key id is the first 16 hex digits of the SHA-256 of the raw public
key. Private key files are written 0600, and loading one that is readable by "other" is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)

from ..errors import KeyFileError

__all__ = ["SUITES", "GatewayKeys", "PartnerKey", "init_gateway_keys", "key_id",
           "load_gateway_keys", "load_partner_key", "load_signing_public", "new_partner_key",
           "read_private", "read_secret", "write_private"]

SUITES = ("x25519", "mlkem768-x25519")
_PARTNER_FORMAT = "dicom-gateway-partner-key/1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def write_private(path: Path, data: bytes) -> None:
    """Create a private key file (0600, ``O_EXCL``): never over an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise KeyFileError(f"{path}: exists; keys are never overwritten (rotation adds a new key)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def read_private(path: Path) -> bytes:
    """Read a private key file, refusing one that any user of the machine could read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{path}: private key file not found") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise KeyFileError(f"{path}: is {kind}, not a private key file")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise KeyFileError(f"{path}: private key is readable by other users "
                           f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the private key: {exc.strerror or exc}") from None


def read_secret(path: Path) -> bytes:
    """A hex secret of at least 16 bytes from a private key file (``uid-secret.key``)."""
    try:
        secret = bytes.fromhex(read_private(path).decode().strip())
    except ValueError:
        raise KeyFileError(f"{path}: not a hex secret") from None
    if len(secret) < 16:
        raise KeyFileError(f"{path}: secret shorter than 16 bytes")
    return secret


@dataclass(frozen=True)
class GatewayKeys:
    signing: ed25519.Ed25519PrivateKey
    key_id: str
    uid_secret: bytes


def init_gateway_keys(out: Path) -> GatewayKeys:
    signing = ed25519.Ed25519PrivateKey.generate()
    secret = os.urandom(32)
    write_private(out / "gateway-signing.key", signing.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    write_private(out / "uid-secret.key", secret.hex().encode() + b"\n")
    public = signing.public_key()
    (out / "gateway-signing.pub").write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return GatewayKeys(signing, key_id(public.public_bytes(*_RAW)), secret)


def load_gateway_keys(signing_key: Path, uid_secret: Path) -> GatewayKeys:
    try:
        signing = serialization.load_pem_private_key(read_private(signing_key), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{signing_key}: not a PEM private key ({exc})") from None
    if not isinstance(signing, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{signing_key}: not an Ed25519 private key")
    secret = read_secret(uid_secret)
    return GatewayKeys(signing, key_id(signing.public_key().public_bytes(*_RAW)), secret)


def load_signing_public(path: Path) -> tuple[ed25519.Ed25519PublicKey, str]:
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a readable public key ({exc})") from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return public, key_id(public.public_bytes(*_RAW))


@dataclass(frozen=True)
class PartnerKey:
    """A partner's HPKE key (public, and private when loaded from the ``.key`` file)."""

    name: str
    suite_name: str
    key_id: str
    public: Any
    private: Any = None

    @property
    def suite(self) -> Suite:
        kem = KEM.X25519 if self.suite_name == "x25519" else KEM.MLKEM768_X25519
        return Suite(kem, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def new_partner_key(name: str, out: Path, suite: str = "x25519") -> PartnerKey:
    if suite not in SUITES:
        raise KeyFileError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    if suite == "x25519":
        x = x25519.X25519PrivateKey.generate()
        private_raw = x.private_bytes_raw()
        public_raw = x.public_key().public_bytes_raw()
    else:
        m, x = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        private_raw = m.private_bytes_raw() + x.private_bytes_raw()
        public_raw = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
    kid = key_id(public_raw)
    doc = {"format": _PARTNER_FORMAT, "name": name, "suite": suite, "key_id": kid,
           "public": base64.b64encode(public_raw).decode()}
    (out).mkdir(parents=True, exist_ok=True)
    write_private(out / f"{name}.key", json.dumps(
        {**doc, "private": base64.b64encode(private_raw).decode()}, indent=2).encode())
    (out / f"{name}.pub").write_text(json.dumps(doc, indent=2) + "\n")
    return load_partner_key(out / f"{name}.key")


def load_partner_key(path: Path) -> PartnerKey:
    """Load ``NAME.pub`` (public only) or ``NAME.key`` (with the private half)."""
    private_file = path.suffix == ".key"
    try:
        raw = read_private(path) if private_file else path.read_bytes()
        doc = json.loads(raw)
        if doc.get("format") != _PARTNER_FORMAT or doc.get("suite") not in SUITES:
            raise ValueError("not a dicom-gateway partner key")
        public_raw = base64.b64decode(doc["public"])
        private_raw = base64.b64decode(doc["private"]) if private_file else None
    except KeyFileError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise KeyFileError(f"{path}: not a partner key file ({exc})") from None
    try:
        public, private = _hpke_keys(doc["suite"], public_raw, private_raw)
    except ValueError as exc:
        raise KeyFileError(f"{path}: the key in it is malformed ({exc})") from None
    if key_id(public_raw) != doc.get("key_id"):
        raise KeyFileError(f"{path}: key id does not match the key")
    return PartnerKey(str(doc["name"]), doc["suite"], doc["key_id"], public, private)


def _hpke_keys(suite: str, public_raw: bytes, private_raw: bytes | None) -> tuple[Any, Any]:
    if suite == "x25519":
        return (x25519.X25519PublicKey.from_public_bytes(public_raw),
                x25519.X25519PrivateKey.from_private_bytes(private_raw) if private_raw else None)
    public = MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(public_raw[:-32]),
        x25519.X25519PublicKey.from_public_bytes(public_raw[-32:]))
    private = (MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(private_raw[:-32]),
        x25519.X25519PrivateKey.from_private_bytes(private_raw[-32:]))
        if private_raw else None)
    return public, private

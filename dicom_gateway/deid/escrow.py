"""Re-identification escrow: the identifiers de-identification took out, encrypted to the
hospital's escrow key and carried in the instance that leaves (decision 0021).

A profile with ``deidentify.escrow`` (the path of the hospital's escrow public key) gets, in
every de-identified instance it sends, the original value of every attribute that
de-identification removed or replaced (UIDs, private attributes and file meta included; never
pixel data), as the DICOM JSON model (PS3.18 F, pydicom ``to_json_dict``), and the tags it
added. Only the holder of the escrow private key can read them: the gateway holds the public
half alone, and the partner's key is of another kind and another key pair.

Encryption: HPKE (RFC 9180) single-shot base mode, DHKEM(X25519, HKDF-SHA256) (RFC 7748,
RFC 5869), HKDF-SHA256, AES-256-GCM, through ``cryptography``'s HPKE: a fresh ephemeral X25519
key per instance, static recipient. ``info`` is ``"dicom-gateway escrow v1" NUL key id``, so
the version and the recipient key id enter the key schedule: a ciphertext presented as another
version or for another key does not decrypt. The plaintext is padded with spaces to a multiple
of 256 bytes, so its length says little about the values.

Block: group ``0x0099`` (the seal's group), private creator ``DICOM-GATEWAY ESCROW 1``; the
seal's ``remove_block`` removes the whole group, so a partner's ``restore`` drops it with the
seal (see docs/private-tags.md):

====== ==== =================================================================================
offset VR   content
====== ==== =================================================================================
0x01   UT   header: canonical JSON ``{"bytes", "format", "key_id", "suite"}``, readable by all
0x02   OB   HPKE ciphertext (encapsulated key, then the sealed plaintext; length ``bytes``)
====== ==== =================================================================================

Keys (``dicom-gateway keys escrow``): ``NAME.key`` (X25519, PKCS#8 PEM, 0600) and ``NAME.pub``
(SubjectPublicKeyInfo PEM, RFC 8410); the key id is the seal's: the first 16 hex digits of the
SHA-256 of the raw public key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from pydicom.dataset import Dataset

from ..errors import GatewayError, KeyFileError
from ..seal.block import GROUP, canonical_json
from ..seal.keys import key_id, read_private, write_private

__all__ = ["CREATOR", "ESCROW_FORMAT", "EscrowError", "EscrowKey", "load_escrow_private",
           "load_escrow_public", "new_escrow_key", "open_escrow", "originals", "read_escrow",
           "write_escrow"]

CREATOR = "DICOM-GATEWAY ESCROW 1"
ESCROW_FORMAT = "dicom-gateway-escrow/1"
_SUITE_NAME = "x25519"  # DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_INFO = b"dicom-gateway escrow v1\0"
_PAD = 256
_PIXELS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # (Float, Double Float) Pixel Data
_PEM = serialization.Encoding.PEM


class EscrowError(GatewayError):
    """An escrow that cannot be opened: ``reason`` ``no_escrow``, ``bad_header``, ``wrong_key``
    or ``decrypt_failed``; the message never quotes the instance's values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class EscrowKey:
    """The hospital's escrow key: the public half, and the private one from a ``.key`` file."""

    key_id: str
    public: x25519.X25519PublicKey
    private: x25519.X25519PrivateKey | None = None


def _of(public: x25519.X25519PublicKey,
        private: x25519.X25519PrivateKey | None = None) -> EscrowKey:
    return EscrowKey(key_id(public.public_bytes_raw()), public, private)


def new_escrow_key(out: Path, name: str) -> EscrowKey:
    """Write ``NAME.key`` (0600, never over an existing file) and ``NAME.pub`` into ``out``."""
    private = x25519.X25519PrivateKey.generate()
    out.mkdir(parents=True, exist_ok=True)
    secret, public = out / f"{name}.key", out / f"{name}.pub"
    for path in (secret, public):
        if path.exists():
            raise KeyFileError(f"{path}: exists; keys are never overwritten (rotation adds a "
                               "new key under a new name)")
    write_private(secret, private.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    public.write_bytes(private.public_key().public_bytes(
        _PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return _of(private.public_key(), private)


def _kind(path: Path, data: bytes) -> str | None:
    """Why ``data`` is no escrow key file, when it is recognizably another kind."""
    if data.lstrip().startswith(b"{"):
        return (f"{path}: a dicom-gateway partner key, not an escrow key: escrow is encrypted "
                "to the hospital's own key, never a partner's ('dicom-gateway keys escrow')")
    return None


def load_escrow_public(path: Path) -> EscrowKey:
    """The escrow public key (``NAME.pub``); a private key or a partner's key is refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the escrow public key: "
                           f"{exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: a private key: the gateway needs only the escrow public "
                           "key (NAME.pub); keep NAME.key off the gateway")
    problem = _kind(path, data)
    if problem:
        raise KeyFileError(problem)
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(public, x25519.X25519PublicKey):
        raise KeyFileError(f"{path}: not an X25519 public key (from 'dicom-gateway keys "
                           "escrow')")
    return _of(public)


def load_escrow_private(path: Path) -> EscrowKey:
    """The escrow private key (``NAME.key``, refused when readable by other users)."""
    data = read_private(path)
    problem = _kind(path, data)
    if problem:
        raise KeyFileError(problem)
    try:
        private = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not a PEM private key without passphrase ({exc})") from None
    if not isinstance(private, x25519.X25519PrivateKey):
        raise KeyFileError(f"{path}: not an X25519 private key (from 'dicom-gateway keys "
                           "escrow')")
    return _of(private.public_key(), private)


def _meta(ds: Dataset) -> Dataset:
    meta = getattr(ds, "file_meta", None)
    return meta if meta is not None else Dataset()


def originals(source: Dataset, deidentified: Dataset) -> dict[str, Any]:
    """``original``: tag -> DICOM JSON of each top-level attribute (file meta too) of
    ``source`` that ``deidentified`` lacks or holds with another value (a sequence whole);
    ``added``: the tags ``deidentified`` has and ``source`` has not. Pixel data never."""
    original: dict[str, Any] = {}
    added: list[str] = []
    for before_ds, after_ds in ((source, deidentified), (_meta(source), _meta(deidentified))):
        for tag in sorted({e.tag for e in before_ds} | {e.tag for e in after_ds}):
            if tag in _PIXELS:
                continue
            before, after = before_ds.get(tag), after_ds.get(tag)
            if before is None:
                added.append(f"{tag:08X}")
            elif after is None or after.VR != before.VR or after.value != before.value:
                # no bulk data handler: every value inline (the threshold then goes unused)
                original[f"{tag:08X}"] = before.to_json_dict(None, 1024)
    return {"format": ESCROW_FORMAT, "original": original, "added": added}


def write_escrow(out: Dataset, source: Dataset, key: EscrowKey) -> None:
    """Add to ``out`` (``source`` de-identified) the escrow block of ``source``'s originals."""
    plain = canonical_json(originals(source, out))
    plain += b" " * (-len(plain) % _PAD)
    ciphertext = _SUITE.encrypt(plain, key.public, info=_INFO + key.key_id.encode())
    header = {"format": ESCROW_FORMAT, "key_id": key.key_id, "suite": _SUITE_NAME,
              "bytes": len(ciphertext)}
    block = out.private_block(GROUP, CREATOR, create=True)
    block.add_new(0x01, "UT", canonical_json(header).decode("ascii"))
    block.add_new(0x02, "OB", ciphertext)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def read_escrow(ds: Dataset) -> tuple[dict[str, Any], bytes] | None:
    """``(header, ciphertext)`` of ``ds``'s escrow, or None when it has none. Works whether a
    PACS kept the VRs or sent the elements as UN."""
    try:
        block = ds.private_block(GROUP, CREATOR)
        text, padded = _bytes(block[0x01].value), _bytes(block[0x02].value)
    except KeyError:
        return None
    try:
        header = json.loads(text.rstrip(b" \0"))
        if header.get("format") != ESCROW_FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
        return header, padded[:int(header["bytes"])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EscrowError("bad_header", f"escrow header unreadable: {exc}") from None


def open_escrow(ds: Dataset, key: EscrowKey) -> dict[str, Any]:
    """The originals in ``ds``'s escrow (``format``, ``original``, ``added``), decrypted with
    the escrow private key."""
    found = read_escrow(ds)
    if found is None:
        raise EscrowError("no_escrow", "no re-identification escrow in this instance")
    header, ciphertext = found
    if header.get("key_id") != key.key_id:
        raise EscrowError("wrong_key", f"not encrypted to this key: the escrow is for key "
                          f"{header.get('key_id')}, this key is {key.key_id}")
    if key.private is None:
        raise EscrowError("wrong_key", "opening needs the escrow private key (NAME.key)")
    try:
        plain = _SUITE.decrypt(ciphertext, key.private, info=_INFO + key.key_id.encode())
        opened: dict[str, Any] = json.loads(plain)
    except Exception:  # AEAD failure: no plaintext, whatever the cause
        raise EscrowError("decrypt_failed", "the escrow does not decrypt with this key "
                          "(altered, or not encrypted to it)") from None
    return opened

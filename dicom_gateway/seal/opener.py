"""The partner's side: verify a sealed instance, and restore the original from it.

Every failure is a :class:`SealError` with a distinct ``reason``:

=================  ============================================================
``no_seal``        the instance carries no dicom-gateway private block
``bad_manifest``   the manifest cannot be read (altered without a gateway key)
``bad_signature``  the signature does not verify: manifest or signature altered
``wrong_gateway``  signed by another gateway key than the one given
``not_this_file``  the manifest belongs to another instance (SOP Instance UID)
``pixels_altered`` decoded pixel values differ from the signed digest
``payload_altered`` the encrypted payload differs from the signed digest
``wrong_key``      the payload is encrypted to another partner key
``decrypt_failed`` the payload does not decrypt with this key
``restore_mismatch`` the restored pixels do not match the original digest
=================  ============================================================
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydicom.dataset import Dataset

from ..errors import SealError
from ..pixels import PixelError, Pixels, pixel_digest, read_pixels, write_pixels
from .block import read_block, remove_block, unpack_payload
from .keys import PartnerKey
from .sealer import HPKE_INFO, SEAL_FORMAT
from .uids import map_uids

__all__ = ["SealError", "Verified", "restore", "verify"]


@dataclass
class Verified:
    manifest: dict[str, Any]
    payload: bytes
    signed: bool  # the signature was checked against a gateway key


def verify(ds: Dataset, gateway_key: tuple[ed25519.Ed25519PublicKey, str] | None) -> Verified:
    """Check the seal of ``ds``; raise :class:`SealError` on the first problem found."""
    block = read_block(ds)
    if block is None:
        raise SealError("no_seal", "no dicom-gateway seal (private block) in this instance")
    body, signature, padded = block
    if gateway_key is not None:
        public = gateway_key[0]
        try:
            public.verify(signature, body)
        except InvalidSignature:
            raise SealError("bad_signature", "signature does not verify with the gateway key: "
                            "the manifest or the signature was altered, or another gateway "
                            "signed it") from None
    try:
        manifest = json.loads(body)
        if manifest.get("format") != SEAL_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        size = int(manifest["payload_bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SealError("bad_manifest", f"manifest unreadable: {exc}") from None
    if gateway_key is not None and manifest["gateway"]["key_id"] != gateway_key[1]:
        raise SealError("wrong_gateway", f"signed by gateway key {manifest['gateway']['key_id']}"
                        f", not {gateway_key[1]}")
    if str(ds.get("SOPInstanceUID", "")) != manifest.get("sop_instance_uid"):
        raise SealError("not_this_file", "the manifest names another SOP Instance UID")
    if manifest["protected_pixels_sha256"] is not None:  # None: no decodable pixels (SEG)
        try:
            values = read_pixels(ds).values
        except PixelError as exc:
            raise SealError("pixels_altered", f"pixel data cannot be decoded: {exc}") from None
        if pixel_digest(values) != manifest["protected_pixels_sha256"]:
            raise SealError("pixels_altered", "decoded pixel values differ from the signed "
                            "digest")
        if not _native_bytes_canonical(ds, values):
            raise SealError("pixels_altered", "pixel data bits outside the stored values "
                            "(unused high bits or padding) were changed")
    payload = padded[:size]
    if len(padded) - size not in (0, 1) or hashlib.sha256(payload).hexdigest() != manifest[
            "payload_sha256"]:
        raise SealError("payload_altered", "the restoration payload differs from the signed "
                        "digest")
    return Verified(manifest, payload, gateway_key is not None)


def _native_bytes_canonical(ds: Dataset, values: np.ndarray) -> bool:
    """For uncompressed little-endian data, the bytes must be exactly the values as written
    (decoders mask bits above BitsStored, so a flip there would otherwise go unseen)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2") or "PixelData" not in ds:
        return True  # compressed or re-encoded by a PACS: the decoded digest is the check
    raw = bytes(ds.PixelData)
    want = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
    return raw == want or (len(raw) == len(want) + 1 and raw[:-1] == want and raw[-1:] == b"\0")


def restore(ds: Dataset, key: PartnerKey,
            gateway_key: tuple[ed25519.Ed25519PublicKey, str] | None = None) -> Dataset:
    """The original instance (pixels, UIDs and changed attributes) from a sealed one."""
    checked = verify(ds, gateway_key)
    manifest = checked.manifest
    if manifest["partner"]["key_id"] != key.key_id:
        raise SealError("wrong_key", f"the payload is encrypted to partner key "
                        f"{manifest['partner']['key_id']} ({manifest['partner']['name']}), "
                        f"not to {key.key_id} ({key.name})")
    if key.private is None:
        raise SealError("wrong_key", "restoring needs the partner's private key (.key file)")
    try:
        plaintext = key.suite.decrypt(checked.payload, key.private, info=HPKE_INFO)
        payload = unpack_payload(plaintext)
    except Exception:  # AEAD failure: no plaintext, whatever the cause
        raise SealError("decrypt_failed", "the payload does not decrypt with this key") from None
    if manifest["original_pixels_sha256"] is None:
        out = copy.deepcopy(ds)
    else:
        if payload.original is not None:  # kept whole (e.g. PALETTE COLOR protected as RGB)
            kept: Pixels = payload.original
        else:
            protected = read_pixels(ds)
            kept = Pixels((protected.values.astype(np.int64) + payload.residual).astype(
                protected.values.dtype), protected.photometric, protected.bits_stored)
        if pixel_digest(kept.values) != manifest["original_pixels_sha256"]:
            raise SealError("restore_mismatch", "restored pixels do not match the original "
                            "digest")
        out = write_pixels(ds, kept)
    remove_block(out)
    map_uids(out, lambda uid: payload.uids.get(uid, uid))
    for tag_hex, value in payload.attributes.items():
        tag = int(tag_hex, 16)
        if value is None:
            if tag in out:
                del out[tag]
        else:
            restored = Dataset.from_json({tag_hex: value})
            out[tag] = restored[tag]
    return out

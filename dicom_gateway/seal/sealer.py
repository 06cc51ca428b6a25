"""Sealing a protected instance for one partner (issue 4; decision 0008).

``seal`` takes the original dataset, the protected dataset and the exact residual, and returns
the instance that leaves: derived UIDs (:mod:`.uids`), ImageType DERIVED, BurnedInAnnotation YES
for visible marks, a ContributingEquipmentSequence item for the gateway, and the private block
(:mod:`.block`) with the signed manifest and the payload encrypted to the partner's key.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .. import __version__
from ..pixels import PixelError, Pixels, pixel_digest, read_pixels
from .block import Payload, canonical_json, pack_payload, write_block
from .keys import GatewayKeys, PartnerKey
from .uids import remap_uids

__all__ = ["PIXEL_MODULE", "SEAL_FORMAT", "seal"]

SEAL_FORMAT = "dicom-gateway-seal/1"
HPKE_INFO = b"dicom-gateway seal payload v1"
# Written by the pixel layer from the values themselves; never restored from the payload.
PIXEL_MODULE = frozenset({
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames",
    "PixelData", "LossyImageCompression", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod"})


def _equipment(method: str, changed: bool) -> Dataset:
    item = Dataset()
    item.Manufacturer = "dicom-gateway"
    item.SoftwareVersions = __version__
    item.ContributionDateTime = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = (f"pixels protected ({method}); sealed for restoration"
                                    if changed else f"pixels unchanged; UIDs derived ({method} "
                                    "route); sealed for restoration")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "109103", "DCM"
    code.CodeMeaning = "Modifying Equipment"
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    return item


def _changed(original: Dataset, sealed: Dataset) -> dict[str, Any]:
    """Original JSON of every top-level public attribute the gateway changed (None: added)."""
    changed: dict[str, Any] = {}
    tags = {e.tag for e in original} | {e.tag for e in sealed}
    for tag in sorted(tags):
        if tag.is_private or tag.group == 0x0002:
            continue
        before, after = original.get(tag), sealed.get(tag)
        keyword = (before or after).keyword
        if keyword in PIXEL_MODULE or not keyword:
            continue
        if before is None or after is None or before.value != after.value:
            # no bulk data handler: every value inline (the threshold then goes unused)
            changed[f"{tag:08X}"] = None if before is None else before.to_json_dict(
                None, 1024)
    return changed


def seal(original: Dataset, protected: Dataset, residual: np.ndarray | None, method: str,
         parameters: dict[str, Any], gateway: GatewayKeys, gateway_id: str,
         partner: PartnerKey, uid_root: str = "2.25", visible: bool = False) -> Dataset:
    """The sealed instance for ``partner`` (``protected`` is not modified).

    ``residual`` ``None`` means the pixels were not changed (e.g. a SEG passed through a
    protecting profile: no BurnedInAnnotation then, and the contributing equipment says so); an
    instance without decodable pixels gets ``null`` pixel digests.
    """
    changed = residual is not None
    out = copy.deepcopy(protected)
    kept: Pixels | None = None
    try:
        protected_values: np.ndarray | None = read_pixels(out).values
    except PixelError:
        protected_values = None
    if protected_values is None:
        if residual is not None and np.any(residual):
            raise PixelError("seal_failed", "a changed instance must have decodable pixels")
        residual = np.zeros((0,), dtype=np.int64)
        digests: tuple[str | None, str | None] = (None, None)
    else:
        if residual is None:
            residual = np.zeros(protected_values.shape, dtype=np.int64)
        kept = _kept_whole(original, out)
        if kept is not None:  # e.g. PALETTE COLOR protected as RGB: keep the original values
            original_values = kept.values
            residual = np.zeros((0,), dtype=np.int64)
        else:
            original_values = (protected_values.astype(np.int64) + residual).astype(
                protected_values.dtype)
        digests = pixel_digest(protected_values), pixel_digest(original_values)
    uids = remap_uids(out, gateway.uid_secret, partner.name, uid_root)
    image_type = list(out.get("ImageType") or ["DERIVED", "PRIMARY"])
    out.ImageType = ["DERIVED", *image_type[1:]] if image_type else ["DERIVED"]
    if visible and changed:
        out.BurnedInAnnotation = "YES"
    equipment = list(out.get("ContributingEquipmentSequence") or [])
    out.ContributingEquipmentSequence = Sequence([*equipment, _equipment(method, changed)])
    attributes = _changed(original, out)
    for derived in list(attributes):  # UIDs come back through the UID map instead
        elem = original.get(int(derived, 16))
        if elem is not None and elem.VR == "UI":
            del attributes[derived]
    plaintext = pack_payload(Payload(uids, attributes, residual.astype(np.int64),
                                     kept))
    ciphertext = partner.suite.encrypt(plaintext, partner.public, info=HPKE_INFO)
    manifest = {
        "format": SEAL_FORMAT, "method": method, "parameters": parameters,
        "gateway": {"id": gateway_id, "key_id": gateway.key_id},
        "partner": {"name": partner.name, "key_id": partner.key_id, "suite": partner.suite_name},
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "sop_instance_uid": str(out.SOPInstanceUID),
        "protected_pixels_sha256": digests[0],
        "original_pixels_sha256": digests[1],
        "payload_sha256": hashlib.sha256(ciphertext).hexdigest(),
        "payload_bytes": len(ciphertext),
    }
    body = canonical_json(_plain(manifest))
    write_block(out, body, gateway.signing.sign(body), ciphertext)
    return out


def _kept_whole(original: Dataset, protected: Dataset) -> Pixels | None:
    """The original's pixels when the protected image is in another representation (its
    photometric interpretation or sample count differ), else None (a residual suffices)."""
    if original.get("PhotometricInterpretation") == protected.get("PhotometricInterpretation") \
            and original.get("SamplesPerPixel") == protected.get("SamplesPerPixel"):
        return None
    return read_pixels(original)


def _plain(value: Any) -> Any:
    """Parameters as JSON-safe values (numpy scalars and tuples from methods)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value

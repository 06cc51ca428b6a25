"""Keyed, deterministic UID derivation for derived (protected) instances.

A new UID is ``<root>.<n>`` where ``n`` is the HMAC-SHA256 (key: the gateway's UID secret) of
``partner NUL original-UID``, read as an integer and cut to the digits that fit in 64
characters (at most 39 digits, i.e. 128 bits under the default root ``2.25``). The same
(partner, UID) always maps the same way, two partners get unrelated UIDs, and without the secret
nobody can link a derived UID to the original. Every UI element whose value is not a UID of the
standard itself (SOP classes, transfer syntaxes, coding schemes...) is remapped, in sequences
too, so references inside a study stay consistent.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

__all__ = ["derive_uid", "map_uids", "remap_uids"]


def derive_uid(secret: bytes, partner: str, uid: str, root: str = "2.25") -> str:
    digest = hmac.new(secret, f"{partner}\0{uid}".encode(), hashlib.sha256).digest()
    digits = min(39, 64 - len(root) - 1)
    value = int.from_bytes(digest[:17], "big") % (10 ** digits)
    return f"{root}.{value or 1}"


def _is_standard(uid: str) -> bool:
    return uid in UID_dictionary or uid.startswith("1.2.840.10008.")


def map_uids(ds: Dataset, change: Callable[[str], str]) -> None:
    """Replace every UI value in ``ds`` (at every depth) by ``change(value)``; keep the file
    meta's MediaStorageSOPInstanceUID equal to the SOP Instance UID."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                map_uids(item, change)
        elif elem.VR == "UI" and elem.value:
            if elem.VM > 1:
                elem.value = [change(str(v)) for v in elem.value]
            else:
                elem.value = change(str(elem.value))
    if hasattr(ds, "file_meta") and "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def remap_uids(ds: Dataset, secret: bytes, partner: str, root: str = "2.25") -> dict[str, str]:
    """Replace instance UIDs in ``ds`` (recursively) in place; return {new: original}."""
    originals: dict[str, str] = {}

    def derive(uid: str) -> str:
        if _is_standard(uid):
            return uid
        derived = derive_uid(secret, partner, uid, root)
        originals[derived] = uid
        return derived

    map_uids(ds, derive)
    return originals

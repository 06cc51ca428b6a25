"""Leak tracing: which partner received a DICOM file found outside (decision 0020).

In order of strength:

1. the seal's signed manifest (``seal/block.py``), checked against the gateway's signing key:
   it names the partner, the method and the time of sealing; the trail adds the profile and
   when the instance was forwarded;
2. the file's UIDs looked up among the UIDs partners received, as the trail records them
   (``sealed`` and ``prepared`` records): derived UIDs are keyed per partner (``seal/uids.py``),
   so one that survives the stripping of the private block still names its partner. The
   derivation cannot be inverted: the trail is the lookup table;
3. nothing: a file with its original UIDs (a pass-through route) or with every UID replaced
   identifies no partner. The trail then says which partners received those original UIDs
   unchanged (any of them, or the hospital itself, may be the source).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydicom import dcmread

from ..seal.block import read_block
from .ledger import Delivery, Ledger
from .trail import AuditTrail

__all__ = ["Finding", "trace_file"]


@dataclass
class Finding:
    """What a file says about where it went. ``partner`` None: unknown."""

    path: Path
    partner: str | None = None
    how: str = ""  # the evidence that named the partner, or why none could
    deliveries: list[Delivery] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    signature: str = "absent"  # valid | INVALID | not checked | absent
    unchanged: list[Delivery] = field(default_factory=list)  # pass-through copies (unknown)
    error: str | None = None


def _manifest(ds: Any, public: ed25519.Ed25519PublicKey | None
              ) -> tuple[dict[str, Any] | None, str]:
    block = read_block(ds)
    if block is None:
        return None, "absent"
    body, signature, _ = block
    try:
        manifest = json.loads(body)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except ValueError:
        return None, "INVALID"
    if public is None:
        return manifest, "not checked"
    try:
        public.verify(signature, body)
    except InvalidSignature:
        return manifest, "INVALID"
    return manifest, "valid"


def trace_file(path: Path, ledger: Ledger, trail: AuditTrail | None,
               public: ed25519.Ed25519PublicKey | None) -> Finding:
    """Trace one file (read without its pixel data); ``trail`` None: no audit trail, only the
    seal can answer."""
    found = Finding(path)
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True)
        uids = {kind: str(ds.get(keyword, "") or "") for kind, keyword in (
            ("sop", "SOPInstanceUID"), ("series", "SeriesInstanceUID"),
            ("study", "StudyInstanceUID"))}
    except Exception as exc:
        found.error = f"not a readable DICOM file ({type(exc).__name__})"
        return found
    found.manifest, found.signature = _manifest(ds, public)
    m = found.manifest
    if m is not None and found.signature in ("valid", "not checked"):
        partner = str((m.get("partner") or {}).get("name", "")) or None
        sop = str(m.get("sop_instance_uid", ""))
        found.partner = partner
        found.deliveries = [d for d in ledger.holders(sop) if d.partner == partner]
        found.how = f"the seal's manifest (signature {found.signature})"
        return found
    for kind in ("sop", "series", "study"):
        uid = uids[kind]
        holders = ledger.holders(uid) if uid else []
        if kind == "sop":
            holders = [d for d in holders if (d.out or {}).get("sop") == uid]
        partners = sorted({d.partner for d in holders})
        if partners:
            found.partner = ", ".join(partners)
            found.deliveries = holders if kind == "sop" else holders[:1]
            found.how = (f"its derived {'SOP Instance' if kind == 'sop' else kind.title()} UID "
                         "in the audit trail" + ("" if found.signature == "absent" else
                                                 " (the seal in it does not verify)"))
            return found
    if trail is not None and uids["sop"]:
        found.unchanged = ledger.unchanged(trail.identifier(uids["sop"]))
    found.how = "nothing in this file identifies a partner (pass-through or stripped)"
    return found

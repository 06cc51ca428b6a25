"""Keyed, consistent replacements per partner: the patient's pseudonym and date shift.

Each partner gets its own 32-byte key, derived with HKDF-SHA256 (RFC 5869) from the gateway's
secret (the seal's ``uid_secret``, from ``keys init``) with the partner's name in ``info``, so
two partners' pseudonyms and shifts are unrelated and no key is stored per partner. Under a
partner's key, the patient (Patient ID with its issuer) always gets the same pseudonym and the
same shift in days, in every study; without the key nobody can link a pseudonym to a Patient
ID, or two partners' pseudonyms to each other, even by trying every plausible Patient ID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydicom.dataset import Dataset

__all__ = ["PSEUDONYM_PREFIX", "Subject", "partner_key", "subject_of"]

PSEUDONYM_PREFIX = "ANON"
_INFO = b"dicom-gateway de-identification v1\0"


def partner_key(secret: bytes, partner: str) -> bytes:
    """The partner's de-identification key (HKDF-SHA256 of the gateway secret)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_INFO + partner.encode()).derive(secret)


@dataclass(frozen=True)
class Subject:
    """What the pseudonym and the date shift of one instance are computed from."""

    key: str  # "patient\0<issuer>\0<id>", or "study\0<StudyInstanceUID>" without a Patient ID

    def _mac(self, partner_key: bytes, purpose: str) -> bytes:
        return hmac.new(partner_key, f"{purpose}\0{self.key}".encode(), hashlib.sha256).digest()

    def pseudonym(self, partner_key: bytes) -> str:
        """``ANON`` and 16 base32 characters (80 bits of HMAC-SHA256): readable, fits SH/LO."""
        code = base64.b32encode(self._mac(partner_key, "pseudonym")[:10]).decode()
        return f"{PSEUDONYM_PREFIX}{code}"

    def day_shift(self, partner_key: bytes, max_days: int) -> int:
        """A whole number of days in ``-max_days .. -1``: dates only move back."""
        value = int.from_bytes(self._mac(partner_key, "date-shift")[:8], "big")
        return -(1 + value % max_days)


def subject_of(ds: Dataset) -> Subject:
    """The patient of ``ds``: Patient ID with Issuer of Patient ID; without a Patient ID, the
    study (each such study then gets its own pseudonym and shift)."""
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
        return Subject(f"patient\0{issuer}\0{patient}")
    return Subject(f"study\0{ds.get('StudyInstanceUID', '')}")

"""The "C" (clean) action on values: dates shifted, free text kept only when it is clean.

Dates (Retain Longitudinal Temporal Information with Modified Dates, PS3.15 E.3.6): a DA value
and the date part of a DT value move by the patient's whole-day shift; times, fractions and UTC
offsets stay, so intervals within and between the patient's studies are exact. A value that is
not a full date cannot be shifted and is removed.

Free text (Clean Descriptors, E.3.5; text inside cleaned sequences, E.3.7): the gateway cannot
rewrite text "with values of similar meaning", so it keeps a value only when it shows none of
the instance's identifying values (names, IDs, accession number, birth date, institution,
addresses, telephone numbers: every word of three or more characters of each) and no date;
otherwise the attribute gets its Basic Profile action. This is a screen, not a guarantee: a
descriptor that names a person the header does not name passes (decision 0018).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["IDENTIFYING_KEYWORDS", "TextScreen", "shift_date", "shift_datetime"]

IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate", "PatientAddress",
    "PatientTelephoneNumbers", "MedicalRecordLocator", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "OperatorsName", "RequestingPhysician",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "AdmissionID", "ServiceEpisodeID", "ResponsiblePerson")
_DATE = re.compile(r"(?<!\d)(?:(?:19|20)\d\d[-./ ]?(?:0[1-9]|1[0-2])[-./ ]?(?:0[1-9]|[12]\d|3[01])"
                   r"|(?:0?[1-9]|[12]\d|3[01])[-./](?:0?[1-9]|1[0-2])[-./](?:19|20)?\d\d)(?!\d)")
_WORD = re.compile(r"[^\W_]+")


def shift_date(value: str, days: int) -> str | None:
    """``YYYYMMDD`` moved by ``days``; None when ``value`` is not such a date."""
    text = value.strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return moved.strftime("%Y%m%d")


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value with its date part moved by ``days`` (the rest kept); None without a full
    date (``YYYY`` or ``YYYYMM`` alone cannot be shifted by days)."""
    text = value.strip()
    shifted = shift_date(text[:8], days)
    return None if shifted is None else shifted + text[8:]


def _values(ds: Dataset, keyword: str) -> Iterable[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, MultiValue)) else [str(value)]


class TextScreen:
    """Decides whether a free-text value may stay (see the module docstring)."""

    def __init__(self, ds: Dataset) -> None:
        words: set[str] = set()
        for keyword in IDENTIFYING_KEYWORDS:
            for value in _values(ds, keyword):
                words.update(w.lower() for w in _WORD.findall(value) if len(w) >= 3)
        for item in ds.get("OtherPatientIDsSequence") or []:
            words.update(w.lower() for w in _WORD.findall(str(item.get("PatientID", "")))
                         if len(w) >= 3)
        birth = str(ds.get("PatientBirthDate", "") or "")
        if len(birth) == 8:  # also written day-month-year or month-day-year
            words.update({birth[6:] + birth[4:6] + birth[:4], birth[4:6] + birth[6:] + birth[:4]})
        self._words = frozenset(words)

    def is_clean(self, value: str) -> bool:
        if _DATE.search(value):
            return False
        return not any(w.lower() in self._words for w in _WORD.findall(value))

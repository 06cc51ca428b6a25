"""De-identifying one instance for one partner: DICOM PS3.15 Annex E, the Basic Application
Level Confidentiality Profile with the profile's options (decision 0018).

Every data element, at every depth of every sequence, gets the action of Table E.1-1
(:mod:`.table`) under the profile's options; the combined codes are resolved without the IOD
tables, to the stricter side: ``X/Z``, ``X/D`` and ``X/Z/D`` remove (X), ``Z/D`` empties (Z),
``X/Z/U*`` keeps the reference sequence with every UID in it replaced (U). ``D`` writes a dummy
of the element's VR (a sequence is removed). Attributes the table does not list are kept,
except: private ones (removed unless the safe-private list keeps them), overlay groups 60xx
(removed whole: the table removes Overlay Data and Comments, and the rest describes them),
dates and times (as the table's: removed, shifted or kept by the longitudinal options), person
names (removed) and UIDs other than the standard's own (replaced, as the seal replaces them).

Replacements are keyed per partner: Patient ID and Patient's Name become the patient's
pseudonym (:mod:`.pseudonym`), dates move by the patient's shift, and a UID becomes the seal's
derived UID for that partner (:func:`~..seal.uids.derive_uid`), so a protected instance's seal
derives its UIDs from the de-identified ones and ``trace`` keeps working with the one secret.
"""

from __future__ import annotations

import copy
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID_dictionary  # type: ignore[attr-defined]

from .. import __version__
from ..seal.uids import derive_uid
from ..settings import DeidConfig
from .clean import TextScreen, shift_date, shift_datetime
from .options import BASIC_PROFILE, OPTIONS
from .pseudonym import partner_key, subject_of
from .table import EDITION, basic_action, option_action

__all__ = ["DUMMY_TEXT", "Deidentifier", "resolve"]

DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {"DA": "19000101", "DT": "19000101000000", "TM": "000000",
                            "AS": "000D", "DS": "0", "IS": "0"}
_NUMBERS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
_BYTES = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_TEXT = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN"})
_FULL, _MODIFIED = "retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"


def resolve(code: str, vr: str) -> str:
    """A Table E.1-1 code as the one action the gateway takes (see the module docstring)."""
    if code == "Z/D":
        return "Z"
    if code == "X/Z/U*":
        return "U" if vr in ("SQ", "UI") else "X"
    if code.startswith("X/"):
        return "X"
    return code


def _is_standard(uid: str) -> bool:
    return uid in UID_dictionary or uid.startswith("1.2.840.10008.")


class Deidentifier:
    """De-identifies instances for one partner under one profile's settings."""

    def __init__(self, config: DeidConfig, secret: bytes, partner: str,
                 uid_root: str = "2.25") -> None:
        self._config = config
        self._options = config.options
        self._secret, self._partner, self._root = secret, partner, uid_root
        self._key = partner_key(secret, partner)
        self._safe = frozenset(config.safe_private) if "retain-safe-private" in \
            config.options else frozenset()
        self._shift = 0  # the current instance's: set by __call__
        self._screen = TextScreen(Dataset())

    def __call__(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (``ds`` is not changed)."""
        out = copy.deepcopy(ds)
        subject = subject_of(ds)
        self._shift = subject.day_shift(self._key, self._config.max_date_shift_days)
        self._screen = TextScreen(ds)
        self._walk(out, cleaning=False)
        pseudonym = subject.pseudonym(self._key)
        out.PatientID = pseudonym
        out.PatientName = pseudonym
        self._mark(out)
        self._file_meta(out)
        return out

    def action(self, tag: int, vr: str) -> str:
        """The action (one of D Z X K C U) for a public element of this VR under the options."""
        code = option_action(tag, self._options) or basic_action(tag)
        if code is not None:
            return resolve(code, vr)
        group = tag >> 16
        if 0x6000 <= group <= 0x60FF and not group % 2:
            return "X"
        if vr in ("DA", "DT"):
            return "C" if _MODIFIED in self._options else "K" if _FULL in self._options else "X"
        if vr == "TM":
            return "K" if {_FULL, _MODIFIED} & self._options else "X"
        if vr == "PN":
            return "X"
        if vr == "UI":
            return "K" if "retain-uids" in self._options else "U"
        return "K"

    def _walk(self, ds: Dataset, cleaning: bool) -> None:
        self._private(ds)
        for elem in list(ds):
            if elem.tag.is_private:
                continue
            self._apply(ds, elem, self.action(int(elem.tag), elem.VR), cleaning)

    def _apply(self, ds: Dataset, elem: DataElement, action: str, cleaning: bool) -> None:
        if action == "X" or (action == "D" and elem.VR == "SQ"):
            del ds[elem.tag]
        elif action == "Z":
            elem.value = [] if elem.VR == "SQ" else None
        elif action == "D":
            elem.value = self._dummy(elem)
        elif action == "U":
            self._uids(elem, cleaning)
        elif action == "C":
            self._clean(ds, elem)
        elif elem.VR == "SQ":  # K: a kept sequence's items get the rules too
            for item in elem.value:
                self._walk(item, cleaning)
        elif cleaning and elem.VR in _TEXT and not self._screen.is_clean(str(elem.value)):
            del ds[elem.tag]  # text inside a cleaned sequence that shows an identifier

    def _dummy(self, elem: DataElement) -> Any:
        if elem.VR == "UI":
            return self._uid(str(elem.value)) if elem.value else "2.25.1"
        if elem.VR in _NUMBERS:
            return 0
        if elem.VR in _BYTES:
            return b"\0\0"
        return _DUMMIES.get(elem.VR, DUMMY_TEXT)

    def _uid(self, uid: str) -> str:
        return uid if _is_standard(uid) else derive_uid(self._secret, self._partner, uid,
                                                        self._root)

    def _uids(self, elem: DataElement, cleaning: bool) -> None:
        if elem.VR == "SQ":
            for item in elem.value:
                self._walk(item, cleaning)
        elif elem.VR == "UI" and elem.value:
            elem.value = ([self._uid(str(v)) for v in elem.value] if elem.VM > 1
                          else self._uid(str(elem.value)))
        elif elem.VR != "UI":
            elem.value = self._dummy(elem)

    def _clean(self, ds: Dataset, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self._walk(item, cleaning=True)
            return
        if vr in ("DA", "DT"):
            if _FULL in self._options:
                return
            shift = shift_date if vr == "DA" else shift_datetime
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            moved = [shift(str(v), self._shift) for v in values if v not in (None, "")]
            if any(m is None for m in moved):
                del ds[elem.tag]  # not a full date: it cannot be shifted, so it goes
            elif moved:
                elem.value = moved if len(moved) > 1 else moved[0]
            return
        if vr in _TEXT and elem.value not in (None, "") and \
                not self._screen.is_clean(str(elem.value)):
            basic = basic_action(int(elem.tag))
            self._apply(ds, elem, resolve(basic, vr) if basic else "X", cleaning=False)

    def _private(self, ds: Dataset) -> None:
        """Private elements go unless the safe-private list keeps them (with their creator)."""
        kept_blocks: set[tuple[int, int]] = set()
        for elem in list(ds):
            tag = elem.tag
            if not tag.is_private or tag.element < 0x0100:
                continue
            creator = ds.get((tag.group << 16) | (tag.element >> 8))
            name = str(creator.value).strip() if creator is not None else ""
            if (tag.group, name, tag.element & 0xFF) in self._safe:
                kept_blocks.add((tag.group, tag.element >> 8))
                if elem.VR == "SQ":
                    for item in elem.value:
                        self._walk(item, cleaning=False)
            else:
                del ds[tag]
        for elem in list(ds):
            tag = elem.tag
            if tag.is_private and tag.element < 0x0100 and \
                    (tag.group, tag.element) not in kept_blocks:
                del ds[tag]

    def _mark(self, ds: Dataset) -> None:
        """Patient Identity Removed, De-identification Method (and its codes, PS3.16 CID 7050)
        and Longitudinal Temporal Information Modified (PS3.15 E.1.1 item 6, E.3.6)."""
        chosen = [OPTIONS[name] for name in sorted(self._options)]
        codes = []
        for value, meaning in [BASIC_PROFILE, *chosen]:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
            codes.append(code)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [f"dicom-gateway {__version__}, PS3.15 {EDITION} Table E.1-1",
                                     *(meaning for _, meaning in [BASIC_PROFILE, *chosen])]
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if _MODIFIED in self._options else
            "UNMODIFIED" if _FULL in self._options else "REMOVED")

    @staticmethod
    def _file_meta(ds: Dataset) -> None:
        """New File Meta Information and preamble (PS3.15 E.1.1 item 7): nothing of the
        sender's (its AE title, its implementation) is carried over."""
        old = getattr(ds, "file_meta", None)
        meta = FileMetaDataset()
        if old is not None and "TransferSyntaxUID" in old:
            meta.TransferSyntaxUID = old.TransferSyntaxUID
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "DICOM_GATEWAY"
        ds.file_meta = meta
        ds.preamble = b"\0" * 128

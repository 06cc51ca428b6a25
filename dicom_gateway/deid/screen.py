"""Instances whose pixels may show identifiers, which de-identifying the header cannot clean.

PS3.15 E.1.1 (note 5 of item 2) leaves burned-in text to the de-identifier; the gateway does
not clean pixels (no Clean Pixel Data Option), so on a de-identifying profile it quarantines
what may carry such text or a face, unless the profile allows that kind (``allow_pixel_risk``):

==================  ===========================================================================
kind                instances
==================  ===========================================================================
burned-in           Burned In Annotation (0028,0301) YES
ultrasound          Modality US, or an Ultrasound SOP Class (annotations are burned in)
secondary-capture   a Secondary Capture SOP Class (screenshots, scanned documents)
photograph          a Visible Light SOP Class (photographs, endoscopy, microscopy, slides) or
                    Modality XC, ES, OP or GM; also Recognizable Visual Features (0028,0302) YES
==================  ===========================================================================
"""

from __future__ import annotations

from pydicom.dataset import Dataset

__all__ = ["RISK_REASONS", "pixel_risk"]

# kind -> (quarantine reason token, what the reason file says)
RISK_REASONS = {
    "burned-in": ("deid_burned_in", "BurnedInAnnotation is YES"),
    "ultrasound": ("deid_ultrasound", "an ultrasound instance (annotations burned in)"),
    "secondary-capture": ("deid_secondary_capture", "a Secondary Capture instance"),
    "photograph": ("deid_photograph", "a photograph (visible light or camera instance)"),
}
_US_CLASSES = ("1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.")
_US_RETIRED = frozenset({"1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"})
_SC = "1.2.840.10008.5.1.4.1.1.7"
_VISIBLE_LIGHT = "1.2.840.10008.5.1.4.1.1.77.1"
_PHOTO_MODALITIES = frozenset({"XC", "ES", "OP", "GM"})


def _yes(ds: Dataset, keyword: str) -> bool:
    return str(ds.get(keyword, "") or "").strip().upper() == "YES"


def _kinds(ds: Dataset) -> list[str]:
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    found = []
    if _yes(ds, "BurnedInAnnotation"):
        found.append("burned-in")
    if modality == "US" or sop_class.startswith(_US_CLASSES) or sop_class in _US_RETIRED:
        found.append("ultrasound")
    if sop_class == _SC or sop_class.startswith(_SC + "."):
        found.append("secondary-capture")
    if sop_class == _VISIBLE_LIGHT or sop_class.startswith(_VISIBLE_LIGHT + ".") or \
            modality in _PHOTO_MODALITIES or _yes(ds, "RecognizableVisualFeatures"):
        found.append("photograph")
    return found


def pixel_risk(ds: Dataset, allowed: frozenset[str]) -> tuple[str, str] | None:
    """``(reason token, message)`` for the first kind of ``ds`` the profile does not allow,
    or None when its pixels may be sent."""
    for kind in _kinds(ds):
        if kind not in allowed:
            reason, what = RISK_REASONS[kind]
            return reason, (f"{what}: its pixels may show identifiers; the profile's "
                            f"deidentify.allow_pixel_risk does not list {kind!r}")
    return None

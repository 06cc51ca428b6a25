"""Checks a received instance against PS3.15 Table E.1-1, attribute by attribute.

The table's codes come from ``dicom_gateway.deid.table`` (the standard's data); what each code
must look like at the receiver is this module's own reading of PS3.15 E.1.1 and of the
resolutions decision 0018 documents, so the gateway's engine is not used to judge itself.
Also the setup the end-to-end de-identification tests share (tests/test_deid.py with in-process
Storage SCPs, tests/test_deid_orthanc.py with Orthanc): the fixed gateway secret, the made-up
identifiers filled into the real series, the pseudonym recomputed from its documented formula,
the gateway configuration, and the check of every received instance at every partner.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
from gwutil import base_config, partner, with_seal
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicom_gateway.deid.table import basic_action, option_action
from dicom_gateway.seal.uids import derive_uid
from dicom_gateway.settings import DeidConfig

__all__ = ["IDENTIFIERS", "REAL_SERIES_BLOCK", "SAFE", "SECRET", "Report", "check_instance",
           "check_received", "fill", "gateway_config", "pseudonym", "render_table"]

SECRET = bytes(range(32))  # a fixed gateway secret: the documented tables stay reproducible
SAFE = [{"tag": "0019,xxB0", "creator": "SIEMENS CT VA0  COAD"}]  # Feed per Rotation
IDENTIFIERS = {"PatientName": "DOE^JANE^Q", "PatientID": "MRN-4711-X",
               "PatientBirthDate": "19580317", "AccessionNumber": "ACC-98765",
               "ReferringPhysicianName": "HOUSE^GREGORY", "InstitutionName": "Plainsboro General",
               "InstitutionAddress": "1 Hospital Road, Plainsboro", "StationName": "CTROOM7",
               "DeviceSerialNumber": "SN-55501", "OperatorsName": "TECH^TINA"}
# the profile the real series are sent through (dates shifted, so the shift shows)
REAL_SERIES_BLOCK: dict[str, Any] = {
    "options": ["retain-longitudinal-modified-dates", "retain-patient-characteristics",
                "clean-descriptors", "retain-safe-private"], "safe_private": SAFE}

SET_BY_GATEWAY = {"PatientIdentityRemoved", "DeidentificationMethod",
                  "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified",
                  "PatientName", "PatientID"}
_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC", "PN"}


@dataclass
class Report:
    shift: int = 0
    rows: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    width: int = 40  # values longer than this are cut in the rows


def pseudonym(partner_name: str, patient_id: str, issuer: str = "") -> str:
    """The documented pseudonym, computed here without the gateway's code."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"dicom-gateway de-identification v1\0" + partner_name.encode()).derive(SECRET)
    mac = hmac.new(key, f"pseudonym\0patient\0{issuer}\0{patient_id}".encode(),
                   hashlib.sha256).digest()
    return "ANON" + base64.b32encode(mac[:10]).decode()


def fill(files: list[Path], patient_id: str = IDENTIFIERS["PatientID"], **extra: Any) -> None:
    """Write :data:`IDENTIFIERS` (then ``extra``) into each file, with this Patient ID."""
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword, value in {**IDENTIFIERS, **extra}.items():
            setattr(ds, keyword, value)
        ds.PatientID = patient_id
        ds.save_as(f, enforce_file_format=True)


def gateway_config(tmp_path: Path, ports: dict[str, int], deidentify: dict[str, Any],
                   method: dict[str, Any] | None = None) -> dict[str, Any]:
    """One route 'research' to every partner (name -> DICOM port) under a de-identifying
    profile, sealed with the fixed :data:`SECRET`."""
    raw = base_config(tmp_path / "spool", [partner(n, port) for n, port in ports.items()],
                      [{"name": "research", "match": {}, "to": list(ports), "profile": "research"}])
    raw["profiles"]["research"] = {**(method or {"method": "none"}), "deidentify": deidentify}
    with_seal(raw, tmp_path / "keys")
    secret = tmp_path / "keys" / "gateway" / "uid-secret.key"
    secret.write_text(SECRET.hex() + "\n")  # fixed: reproducible pseudonyms in the docs table
    return raw


def _expected(elem: DataElement, config: DeidConfig) -> tuple[str, str]:
    """(table code or '', action) for a public or private element."""
    options, tag, vr = config.options, int(elem.tag), elem.VR
    code = option_action(tag, options) or basic_action(tag) or ""
    if code:
        resolved = {"Z/D": "Z", "X/Z": "X", "X/D": "X", "X/Z/D": "X"}.get(code, code)
        if code == "X/Z/U*":
            resolved = "U" if vr in ("SQ", "UI") else "X"
        return code, resolved
    group = tag >> 16
    if 0x6000 <= group <= 0x60FF and not group % 2:
        return "", "X"
    long = {"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"} & options
    if vr in ("DA", "DT"):
        return "", ("C" if "retain-longitudinal-modified-dates" in options else "K" if long
                    else "X")
    if vr == "TM":
        return "", "K" if long else "X"
    if vr == "PN":
        return "", "X"
    if vr == "UI":
        return "", "K" if "retain-uids" in options else "U"
    return "", "K"


def _private(elem: DataElement, source: Dataset, config: DeidConfig) -> str:
    """K for a private element on the safe-private list (and for its creator), else X."""
    if "retain-safe-private" not in config.options:
        return "X"
    group, element = elem.tag.group, elem.tag.element
    if element < 0x100:  # a creator: kept when its block keeps an element
        return "K" if any(e.tag.group == group and e.tag.element >> 8 == element and
                          _private(e, source, config) == "K" for e in source) else "X"
    creator = source.get((group << 16) | (element >> 8))
    name = str(creator.value).strip() if creator is not None else ""
    return "K" if (group, name, element & 0xFF) in config.safe_private else "X"


def _short(elem: DataElement | None, width: int = 40) -> str:
    if elem is None:
        return "(absent)"
    if elem.VR == "SQ":
        return f"{len(elem.value)} item(s)"
    if elem.VR in ("OB", "OW", "UN"):
        return f"{len(elem.value or b'')} bytes"
    text = ("\\".join(str(v) for v in elem.value) if elem.VM > 1 else
            "" if elem.value is None else str(elem.value))
    text = text.replace("|", "/")
    return (text[:width - 3] + "...") if len(text) > width else text or "(empty)"


def _days(before: str, after: str) -> int:
    def parse(v: str) -> date:
        return date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    return (parse(after) - parse(before)).days


def _check(elem: DataElement, got: DataElement | None, action: str, report: Report,
           secret: bytes, partner: str) -> None:
    name = elem.keyword or str(elem.tag)
    if action == "X":
        assert got is None, f"{name}: must be removed"
        return
    if action == "C" and elem.VR in _TEXT and got is None:
        return  # text that failed the screen gets its Basic Profile action (E.3.5: C)
    assert got is not None, f"{name}: must be present ({action})"
    if action == "Z":
        assert got.value in (None, "", []), f"{name}: must be empty"
    elif action == "D":
        assert got.value not in (None, "", []) and got.value != elem.value, f"{name}: dummy"
    elif action == "U" and elem.VR == "UI":
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        want = [v if str(v).startswith("1.2.840.10008.") else
                derive_uid(secret, partner, str(v)) for v in values]
        assert (list(got.value) if got.VM > 1 else [got.value]) == want, f"{name}: UID"
    elif action == "C" and elem.VR in ("DA", "DT") and elem.value:
        moved = _days(str(elem.value), str(got.value))
        assert str(got.value)[8:] == str(elem.value)[8:], f"{name}: only the date moves"
        report.shift = report.shift or moved
        assert moved == report.shift and -365 <= moved <= -1, f"{name}: shift {moved}"
    elif action == "C" and elem.VR in _TEXT:
        assert got.value in (None, "", elem.value), f"{name}: cleaned text is kept or removed"
    elif elem.VR != "SQ" and action in ("K", "C"):
        assert got.value == elem.value, f"{name}: must be kept"


def check_instance(source: Dataset, got: Dataset, config: DeidConfig, secret: bytes,
                   partner: str, prefix: str = "", report: Report | None = None) -> Report:
    """Assert every attribute of ``got`` against ``source`` and the table; return the rows."""
    report = report if report is not None else Report()
    for elem in source:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        target = got.get(elem.tag)
        if prefix == "" and keyword in SET_BY_GATEWAY:
            report.rows.append((f"{elem.tag}", keyword, "", "set", _short(elem, report.width),
                                _short(target, report.width)))
            continue
        code, action = (("private", _private(elem, source, config)) if elem.tag.is_private
                        else _expected(elem, config))
        _check(elem, target, action, report, secret, partner)
        label = keyword if not elem.tag.is_private else f"private {keyword or ''}".strip()
        report.rows.append((f"{prefix}{elem.tag}", label, code or "-", action,
                            _short(elem, report.width), _short(target, report.width)))
        if elem.VR == "SQ" and target is not None and action in ("K", "C", "U"):
            assert len(target.value) == len(elem.value), f"{keyword}: items"
            for before, after in zip(elem.value, target.value, strict=True):
                check_instance(before, after, config, secret, partner, prefix + "> ", report)
    if prefix == "":
        added = [e for e in got if e.tag not in source]
        extra = {e.keyword for e in added}
        assert extra <= SET_BY_GATEWAY, f"attributes added: {sorted(extra - SET_BY_GATEWAY)}"
        report.rows += [(f"{e.tag}", e.keyword, "", "set", "(absent)", _short(e, report.width))
                        for e in added]
    return report


def check_received(received: dict[str, list[Dataset]], originals: Iterable[Dataset],
                   config: DeidConfig, shown: Iterable[str] = (), width: int = 40
                   ) -> tuple[dict[str, int], dict[tuple[str, str], Report]]:
    """Check every instance each partner received (name -> datasets) against its original.

    Each is checked attribute by attribute (:func:`check_instance`); Patient ID and Patient's
    Name must be the partner's pseudonym of the original Patient ID; every original study must
    have reached every partner, and all of one partner's studies (of the one patient) must be
    shifted by the same number of days, a different one at each partner. Returns the shift per
    partner and the reports of the ``shown`` original SOP Instance UIDs, by (partner, UID).
    """
    originals = list(originals)
    studies = {str(ds.StudyInstanceUID) for ds in originals}
    shifts: dict[tuple[str, str], set[int]] = {}
    reports: dict[tuple[str, str], Report] = {}
    for name, datasets in received.items():
        by_derived = {derive_uid(SECRET, name, str(ds.SOPInstanceUID)): ds for ds in originals}
        assert len(datasets) == len(originals), f"{name}: {len(datasets)} instances"
        for got in datasets:
            source = by_derived[str(got.SOPInstanceUID)]
            report = check_instance(source, got, config, SECRET, name, report=Report(width=width))
            want = pseudonym(name, str(source.PatientID))
            assert str(got.PatientID) == str(got.PatientName) == want, f"{name}: pseudonym"
            shifts.setdefault((name, str(source.StudyInstanceUID)), set()).add(report.shift)
            if str(source.SOPInstanceUID) in shown:
                reports[(name, str(source.SOPInstanceUID))] = report
        assert {s for p, s in shifts if p == name} == studies, f"{name}: studies"
    assert all(len(s) == 1 for s in shifts.values()), shifts  # one shift per study
    per_partner = {n: {s for (p, _), v in shifts.items() if p == n for s in v} for n in received}
    assert all(len(s) == 1 for s in per_partner.values()), per_partner  # across the studies
    by_partner = {n: next(iter(s)) for n, s in per_partner.items()}
    assert len(set(by_partner.values())) == len(by_partner), by_partner  # unrelated partners
    return by_partner, reports


def render_table(rows: list[tuple[str, str, str, str, str, str]], block: dict[str, object],
                 partner_name: str = "acme") -> str:
    """The Markdown table docs/deidentification.md shows (first received instance)."""
    lines = [f"Profile: `deidentify: {block}` (method `none`), partner `{partner_name}`, "
             "gateway secret fixed for the test run.", "",
             "| tag | attribute | Table E.1-1 | action | sent by the hospital | received |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t} | {k} | {c} | {a} | {o} | {r} |" for t, k, c, a, o, r in rows]
    return "\n".join(lines) + "\n"

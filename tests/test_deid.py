"""De-identification per route profile: DICOM PS3.15 Annex E (decision 0018).

The expectations here are written from the standard, not read back from the implementation:
a hand-written list of attributes with their Table E.1-1 codes and what a receiver must see
under two option sets, the pseudonym recomputed from its documented formula (HKDF-SHA256 of the
gateway secret, HMAC-SHA256, base32), dates checked against one shift per patient and partner.
The end-to-end tests send the real 18-slice CT series (skipped without the shared data) and
pydicom's examples through a running gateway to in-process Storage SCPs.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from deid_check import (
    IDENTIFIERS,
    REAL_SERIES_BLOCK,
    SAFE,
    SECRET,
    fill,
    gateway_config,
    pseudonym,
)
from gwutil import base_config, partner, running_gateway, send, with_seal
from peers import RecordingSCP, copy_ct_series
from peers_data import shared_data_dir
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicom_gateway.config import parse_config
from dicom_gateway.deid import Deidentifier, parse_deidentify
from dicom_gateway.deid.table import EDITION, basic_action, option_action
from dicom_gateway.errors import ConfigError
from dicom_gateway.seal.uids import derive_uid

ROOT = Path(__file__).resolve().parents[1]
TABLE_DOC = ROOT / "docs" / "deidentification.md"
RESEARCH = ["retain-longitudinal-modified-dates", "retain-patient-characteristics",
            "retain-device-identity", "retain-institution-identity", "clean-descriptors",
            "retain-safe-private"]


# -- the standard, written out by hand --------------------------------------------------------
# keyword: (Table E.1-1 Basic Profile code, received under no option, received under RESEARCH)
# received: pseudonym | empty | removed | kept | shifted | uid (the partner's derived UID)
EXPECTED: dict[str, tuple[str, str, str]] = {
    "PatientName": ("Z", "pseudonym", "pseudonym"),
    "PatientID": ("Z/D", "pseudonym", "pseudonym"),
    "PatientBirthDate": ("Z", "empty", "empty"),  # no option keeps it
    "PatientSex": ("Z", "empty", "kept"),  # Rtn. Pat. Chars.: K
    "PatientAge": ("X", "removed", "kept"),
    "PatientWeight": ("X", "removed", "kept"),
    "AccessionNumber": ("Z", "empty", "empty"),
    "ReferringPhysicianName": ("Z", "empty", "empty"),
    "InstitutionName": ("X/Z/D", "removed", "kept"),  # Rtn. Inst. Id.: K
    "InstitutionAddress": ("X", "removed", "kept"),
    "StationName": ("X/Z/D", "removed", "kept"),  # Rtn. Dev. Id.: K
    "DeviceSerialNumber": ("X/Z/D", "removed", "kept"),
    "OperatorsName": ("X/Z/D", "removed", "removed"),  # no option column
    "StudyDate": ("Z", "empty", "shifted"),  # Rtn. Long. Modif. Dates: C
    "SeriesDate": ("X/D", "removed", "shifted"),
    "AcquisitionDate": ("X/Z", "removed", "shifted"),
    "ContentDate": ("Z/D", "empty", "shifted"),
    "StudyTime": ("Z", "empty", "kept"),  # times stay: the shift is whole days
    "StudyDescription": ("X", "removed", "kept"),  # Clean Desc.: C, and the text is clean
    "SeriesDescription": ("X", "removed", "removed"),  # C, but it names the patient
    "StudyID": ("Z", "empty", "empty"),
    "OtherPatientIDsSequence": ("X", "removed", "removed"),
    "RequestAttributesSequence": ("X", "removed", "kept"),  # C: items cleaned (below)
    "StudyInstanceUID": ("U", "uid", "uid"),
    "SeriesInstanceUID": ("U", "uid", "uid"),
    "SOPInstanceUID": ("U", "uid", "uid"),
    "FrameOfReferenceUID": ("U", "uid", "uid"),
    "ReferencedStudySequence": ("X/Z", "removed", "removed"),  # K only under Retain UIDs
    "Manufacturer": ("", "kept", "kept"),  # not in the table
    "Modality": ("", "kept", "kept"),
}
# option columns the standard gives (spot checks of the transcription), keyword -> option: code
COLUMN_SPOT_CHECKS = {
    "PatientSex": ("retain-patient-characteristics", "K"),
    "Allergies": ("retain-patient-characteristics", "C"),
    "StationName": ("retain-device-identity", "K"),
    "XRaySourceID": ("retain-device-identity", "K"),
    "InstitutionalDepartmentName": ("retain-institution-identity", "K"),
    "SeriesDescription": ("clean-descriptors", "C"),
    "ContrastBolusAgent": ("clean-descriptors", "C"),
    "ContentSequence": ("clean-structured-content", "C"),
    "AcquisitionDateTime": ("retain-longitudinal-full-dates", "K"),
    "LastMenstrualDate": ("retain-longitudinal-modified-dates", "C"),
    "StudyInstanceUID": ("retain-uids", "K"),
    "ReferencedImageSequence": ("retain-uids", "K"),
}
ADDED = {"PatientIdentityRemoved", "DeidentificationMethod",
         "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified"}


def rich_dataset(patient_id: str = "MRN-4711-X", study_uid: str | None = None) -> Dataset:
    """CT_small with identifiers everywhere: top level, a private block, nested sequences."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240229"
    ds.StudyTime = "101500"
    ds.StudyDescription, ds.SeriesDescription = "CT ABDOMEN W CONTRAST", "Follow-up Doe"
    ds.PatientSex, ds.PatientAge, ds.PatientWeight, ds.StudyID = "F", "065Y", 61.5, "S-77"
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "OLD-123", "OTHER HOSPITAL"
    ds.OtherPatientIDsSequence = Sequence([other])
    request = Dataset()
    request.RequestedProcedureDescription = "CT ABDOMEN"
    request.ScheduledProcedureStepID = "SPS-5550"
    request.AccessionNumber = "ACC-98765"
    request.ReasonForTheRequestedProcedure = "pain, see HOUSE"
    ds.RequestAttributesSequence = Sequence([request])
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = generate_uid()
    ds.ReferencedStudySequence = Sequence([study])
    block = ds.private_block(0x0019, "SIEMENS CT VA0  COAD", create=True)
    block.add_new(0xB0, "DS", "17.3")
    block.add_new(0x12, "LO", "MRN-4711-X")
    ds.private_block(0x0029, "ACME SECRET", create=True).add_new(0x01, "PN", "DOE^JANE")
    ds.add_new(0x60003000, "OW", b"\0\1" * 8)  # an overlay plane: goes with its group
    ds.add_new(0x60000010, "US", 4)
    return ds


def _values(ds: Dataset) -> list[str]:
    """Every value of ``ds`` as text, at every depth (to look for a removed identifier)."""
    found = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found += _values(item)
        elif elem.VR not in ("OB", "OW", "UN"):
            found.append(str(elem.value))
    return found


def _deid(options: list[str], partner_name: str = "acme", **extra: Any) -> Deidentifier:
    config = parse_deidentify({"options": options, **extra})
    return Deidentifier(config, SECRET, partner_name)


def _received(original: Dataset, out: Dataset, keyword: str, days: int) -> str:
    """What ``out`` shows for ``keyword`` in the vocabulary of :data:`EXPECTED`."""
    if keyword not in out:
        return "removed"
    value, before = out.data_element(keyword).value, original.data_element(keyword).value
    if keyword in ("PatientName", "PatientID"):
        return "pseudonym" if str(value) == pseudonym("acme", "MRN-4711-X") else "?"
    if value in (None, "", []):
        return "empty"
    if isinstance(value, Sequence):  # a kept sequence: its items get the rules (checked apart)
        return "kept" if len(value) == len(before) else "?"
    if keyword.endswith("UID"):
        return "uid" if value == derive_uid(SECRET, "acme", str(before)) else "?"
    if keyword.endswith("Date") and value != before:
        moved = (date.fromisoformat(_iso(str(value))) - date.fromisoformat(_iso(str(before))))
        return "shifted" if moved.days == days else f"shifted by {moved.days}"
    return "kept" if value == before else f"changed to {value!r}"


def _iso(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


# -- unit: the table, the options, one instance ----------------------------------------------
def test_the_table_is_the_standards_for_the_hand_written_attributes() -> None:
    from pydicom.datadict import tag_for_keyword

    assert EDITION == "2026c"
    for keyword, (code, _, _) in EXPECTED.items():
        assert (basic_action(tag_for_keyword(keyword)) or "") == code, keyword
    for keyword, (option, code) in COLUMN_SPOT_CHECKS.items():
        assert option_action(tag_for_keyword(keyword), frozenset([option])) == code, keyword
    assert option_action(tag_for_keyword("PatientBirthDate"),
                         frozenset(["retain-longitudinal-modified-dates"])) is None
    assert basic_action(0x50020000) == "X" and basic_action(0x60023000) == "X"  # 50xx, 60xx


@pytest.mark.parametrize("column", [1, 2], ids=["basic", "research"])
def test_every_attribute_gets_the_tables_action(column: int) -> None:
    original = rich_dataset()
    options = [] if column == 1 else RESEARCH
    out = _deid(options, safe_private=SAFE if column == 2 else [])(original)
    days = 0
    if "StudyDate" in out and out.StudyDate:
        days = (date.fromisoformat(_iso(out.StudyDate)) - date(2024, 2, 29)).days
        assert -365 <= days <= -1
    for keyword, expected in EXPECTED.items():
        assert _received(original, out, keyword, days) == expected[column], keyword
    from deid_check import check_instance  # and every other attribute, by the table

    config = parse_deidentify({"options": options, "safe_private": SAFE if column == 2 else []})
    assert check_instance(original, out, config, SECRET, "acme").shift in (0, days)
    assert 0x60003000 not in out and 0x60000010 not in out  # overlays: the whole group
    assert out.PatientIdentityRemoved == "YES"
    codes = [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and all(c.CodingSchemeDesignator == "DCM"
                                        for c in out.DeidentificationMethodCodeSequence)
    if column == 1:
        assert codes == ["113100"] and out.LongitudinalTemporalInformationModified == "REMOVED"
        assert not [e for e in out if e.tag.is_private]
    else:
        assert sorted(codes) == ["113100", "113105", "113107", "113108", "113109", "113111",
                                 "113112"]
        assert out.LongitudinalTemporalInformationModified == "MODIFIED"
        kept = [e for e in out if e.tag.is_private]
        assert [e.value for e in kept] == ["SIEMENS CT VA0  COAD", "17.3"]  # creator, element
        assert kept[1].tag.element & 0xFF == 0xB0 and kept[1].tag.element >> 8 == \
            kept[0].tag.element
        item = out.RequestAttributesSequence[0]  # cleaned: the rules applied inside
        assert item.RequestedProcedureDescription == "CT ABDOMEN"
        assert "ScheduledProcedureStepID" not in item and not item.AccessionNumber
        assert "ReasonForTheRequestedProcedure" not in item  # names the referring physician
    text = " ".join(_values(out)).upper()
    for value in [*IDENTIFIERS.values(), "OLD-123", "SPS-5550", "S-77"]:
        if column == 2 and value in (IDENTIFIERS["InstitutionName"],
                                     IDENTIFIERS["InstitutionAddress"],
                                     IDENTIFIERS["StationName"], IDENTIFIERS["DeviceSerialNumber"]):
            continue  # retained on purpose by the options
        assert value.upper() not in text, value
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_same_patient_same_pseudonym_and_shift_per_partner_different_across() -> None:
    first, second = rich_dataset(), rich_dataset()  # two studies of one patient
    second.StudyDate = "20250110"
    acme = _deid(["retain-longitudinal-modified-dates"])
    beta = _deid(["retain-longitudinal-modified-dates"], "beta")
    a1, a2, b1 = acme(first), acme(second), beta(first)
    assert a1.StudyInstanceUID != a2.StudyInstanceUID
    assert a1.PatientID == a2.PatientID == pseudonym("acme", "MRN-4711-X")
    assert b1.PatientID == pseudonym("beta", "MRN-4711-X") != a1.PatientID

    def shift(ds: Dataset, before: str) -> int:
        return (date.fromisoformat(_iso(ds.StudyDate)) - date.fromisoformat(_iso(before))).days

    assert shift(a1, "20240229") == shift(a2, "20250110")
    assert shift(b1, "20240229") != shift(a1, "20240229")  # 1 in 365 would collide: fixed key
    other = acme(rich_dataset(patient_id="MRN-0001"))
    assert other.PatientID != a1.PatientID


def test_retain_uids_and_full_dates_keep_them() -> None:
    original = rich_dataset()
    out = _deid(["retain-uids", "retain-longitudinal-full-dates"])(original)
    assert out.StudyInstanceUID == original.StudyInstanceUID
    assert out.ReferencedStudySequence[0].ReferencedSOPInstanceUID == \
        original.ReferencedStudySequence[0].ReferencedSOPInstanceUID
    assert out.StudyDate == "20240229" and out.LongitudinalTemporalInformationModified == \
        "UNMODIFIED"


@pytest.mark.parametrize(("block", "key", "problem"), [
    ({"options": ["retain-everything"]}, "deidentify.options[0]", "unknown 'retain-everything'"),
    ({"colour": 1}, "deidentify.colour", "unknown key"),
    ({"safe_private": SAFE}, "deidentify.safe_private", "needs the option retain-safe-private"),
    ({"options": ["retain-safe-private"], "safe_private": [{"tag": "0018,xx10",
                                                            "creator": "X"}]},
     "deidentify.safe_private[0].tag", "must be a private tag"),
    ({"allow_pixel_risk": ["faces"]}, "deidentify.allow_pixel_risk[0]", "unknown 'faces'"),
    ({"max_date_shift_days": 0}, "deidentify.max_date_shift_days", "1..3650"),
])
def test_config_errors_name_the_file_and_key(tmp_path: Path, block: dict[str, Any], key: str,
                                            problem: str) -> None:
    raw = with_seal(base_config(tmp_path / "spool", [partner("acme", 11112)], []),
                    tmp_path / "keys")
    raw["profiles"]["research"] = {"method": "none", "deidentify": block}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "gw.yaml")
    assert str(caught.value).startswith(f"gw.yaml: profiles.research.{key}: ")
    assert problem in str(caught.value)


def test_a_deidentifying_route_needs_the_seal_secret(tmp_path: Path) -> None:
    raw = base_config(tmp_path / "spool", [partner("acme", 11112)],
                      [{"name": "all", "match": {}, "to": ["acme"], "profile": "research"}])
    raw["profiles"]["research"] = {"method": "none", "deidentify": {}}
    with pytest.raises(ConfigError, match=r"^gw.yaml: seal: routes\[0\] sends profile "
                                          "'research', which de-identifies"):
        parse_config(raw, "gw.yaml")


# -- end to end through the gateway --------------------------------------------------------------
def _gateway_config(tmp_path: Path, scps: dict[str, RecordingSCP], deidentify: dict[str, Any],
                    method: dict[str, Any] | None = None) -> dict[str, Any]:
    return gateway_config(tmp_path, {n: s.port for n, s in scps.items()}, deidentify, method)


def test_pixels_that_may_show_identifiers_are_quarantined_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    burned = rich_dataset()
    burned.BurnedInAnnotation = "YES"
    ultrasound = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))  # Modality US
    ultrasound.PatientName, ultrasound.PatientID = "DOE^JANE", "MRN-4711-X"
    clean = rich_dataset()
    with RecordingSCP(store_dir=tmp_path / "got") as scp:
        raw = _gateway_config(tmp_path, {"acme": scp}, {"options": RESEARCH,
                                                        "safe_private": SAFE})
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [burned, ultrasound, clean]) == [0, 0, 0]
            assert scp.wait_for_count(1, timeout=30) == 1
            deadline_files = list((tmp_path / "spool" / "quarantine" / "acme").glob("*.json"))
    assert scp.received_sops == {derive_uid(SECRET, "acme", clean.SOPInstanceUID)}
    reasons = {json.loads(p.read_text())["reason"]: json.loads(p.read_text())["message"]
               for p in deadline_files}
    assert set(reasons) == {"deid_burned_in", "deid_ultrasound"}
    assert "BurnedInAnnotation is YES" in reasons["deid_burned_in"]
    assert len(list((tmp_path / "spool" / "quarantine" / "acme").glob("*.dcm"))) == 2
    for secret in ("DOE", "MRN-4711-X", "19580317", "ACC-98765"):
        assert secret not in caplog.text


def test_a_profile_that_allows_ultrasound_sends_it_de_identified(tmp_path: Path) -> None:
    ultrasound = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm"))
    ultrasound.PatientName, ultrasound.PatientID = "DOE^JANE", "MRN-4711-X"
    with RecordingSCP(store_dir=tmp_path / "got") as scp:
        raw = _gateway_config(tmp_path, {"acme": scp}, {"allow_pixel_risk": ["ultrasound"]})
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [ultrasound]) == [0]
            assert scp.wait_for_count(1, timeout=30) == 1
    got = pydicom.dcmread(next((tmp_path / "got").glob("*.dcm")))
    assert got.PatientID == pseudonym("acme", "MRN-4711-X") and got.PatientIdentityRemoved == "YES"


def test_restore_gives_original_pixels_and_no_removed_identifier(tmp_path: Path) -> None:
    """De-identify, protect (a real method, one step), seal; the partner restores."""
    from importlib.resources import files

    from dicom_gateway.pixels import pixel_digest, read_pixels
    from dicom_gateway.seal import load_partner_key, restore
    from dicom_gateway.seal.keys import load_signing_public

    pytest.importorskip("torch")
    surrogate = str(files("dicom_gateway").joinpath("defaults", "pneumonia-cnn-small.pt"))
    original = rich_dataset()
    want = pixel_digest(read_pixels(original).values)
    with RecordingSCP(store_dir=tmp_path / "got") as scp:
        raw = _gateway_config(tmp_path, {"acme": scp}, {"options": RESEARCH,
                                                        "safe_private": SAFE},
                              {"method": "adversarial_perturbation", "surrogates": [surrogate],
                               "steps": 1})
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [original]) == [0]
            assert scp.wait_for_count(1, timeout=120) == 1
    sent = pydicom.dcmread(next((tmp_path / "got").glob("*.dcm")))
    assert pixel_digest(read_pixels(sent).values) != want  # protected
    keys = tmp_path / "keys"
    back = restore(sent, load_partner_key(keys / "partners" / "acme.key"),
                   load_signing_public(keys / "gateway" / "gateway-signing.pub"))
    assert pixel_digest(read_pixels(back).values) == want  # bit-exact original pixels
    assert back.PatientID == pseudonym("acme", "MRN-4711-X")
    assert back.SOPInstanceUID == derive_uid(SECRET, "acme", original.SOPInstanceUID)
    text = " ".join(_values(back)).upper()
    for value in ["DOE", "MRN-4711-X", "19580317", "ACC-98765", "HOUSE", "TECH^TINA", "OLD-123",
                  "FOLLOW-UP", original.StudyInstanceUID, original.SOPInstanceUID]:
        assert value.upper() not in text, value


# -- acceptance (a): the real CT series through a de-identifying route -------------------------
# (the same against Orthanc, with an MR study too: tests/test_deid_orthanc.py)
def test_real_ct_series_checked_attribute_by_attribute(tmp_path: Path) -> None:
    from deid_check import check_received, render_table

    if shared_data_dir() is None:
        pytest.skip("shared test data absent: the real CT series (set DICOM_GATEWAY_DATA)")
    first = copy_ct_series(tmp_path / "study1")
    second = copy_ct_series(tmp_path / "study2", study_uid=generate_uid(), fresh_uids=True)
    fill(first + second)
    block = REAL_SERIES_BLOCK
    with RecordingSCP(store_dir=tmp_path / "acme") as acme, \
            RecordingSCP(store_dir=tmp_path / "beta") as beta:
        raw = _gateway_config(tmp_path, {"acme": acme, "beta": beta}, block)
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, first + second) == [0] * 36
            assert acme.wait_for_count(36, timeout=60) == 36
            assert beta.wait_for_count(36, timeout=60) == 36
    shown = str(pydicom.dcmread(first[0]).SOPInstanceUID)  # slice 1 of the real study
    received = {name: [pydicom.dcmread(p) for p in sorted((tmp_path / name).glob("*.dcm"))]
                for name in ("acme", "beta")}
    _, reports = check_received(received, [pydicom.dcmread(f) for f in first + second],
                                parse_deidentify(block), [shown])
    table = render_table(reports["acme", shown].rows, block)
    if os.environ.get("DICOM_GATEWAY_WRITE_DEID_TABLE"):
        text = TABLE_DOC.read_text(encoding="utf-8")
        start = text.index("<!-- table:start -->")
        end = text.index("<!-- table:end -->")
        TABLE_DOC.write_text(text[:start] + "<!-- table:start -->\n" + table + text[end:],
                             encoding="utf-8")
    assert table in TABLE_DOC.read_text(encoding="utf-8"), (
        "docs/deidentification.md is stale: rerun this test with "
        "DICOM_GATEWAY_WRITE_DEID_TABLE=1")

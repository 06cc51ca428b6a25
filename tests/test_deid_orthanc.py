"""Acceptance (a) of issue 13 against Orthanc: one patient's CT and MR studies through a
de-identifying route to two real Orthanc servers (two partners), every attribute of every
instance they stored checked against PS3.15 Table E.1-1 for the profile's options.

The hospital side: the real 18-slice CT series (KiTS, the shared data folder; skipped without
it) as two studies of one patient, and one MR study of the same patient. The issue's reporter
had a GE knee MR series; no knee MR is available here (nothing can be downloaded), so the MR
study is pydicom's ``MR_small.dcm`` (a real Toshiba MR image, downsized from the NEMA WG04 set)
as a series of three instances with their own SOP Instance UIDs and Instance Numbers; set
``DICOM_GATEWAY_MR_SERIES=<folder>`` to send a real MR series (e.g. that knee MR) instead,
every file of the folder as found. All get
the same made-up patient name, ID, birth date, accession number, referring physician,
institution name and address, station name, device serial number, operator and dates.

What Orthanc stored is fetched back from its REST API (``/instances/{id}/file``), checked
attribute by attribute by ``tests/deid_check.py`` (the same check tests/test_deid.py applies to
in-process Storage SCPs), and searched byte by byte for every original identifier. Set
``DICOM_GATEWAY_WRITE_DEID_RECEIVED=<path>`` to write the attribute -> action -> received table
of one CT and one MR instance as Markdown (for a note; not committed).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
from deid_check import (
    IDENTIFIERS,
    REAL_SERIES_BLOCK,
    Report,
    check_received,
    fill,
    gateway_config,
    pseudonym,
    render_table,
)
from gwutil import running_gateway, send
from peers import copy_ct_series
from peers_orthanc import OrthancPeer
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_gateway.deid import parse_deidentify

WRITE_ENV = "DICOM_GATEWAY_WRITE_DEID_RECEIVED"
MR_ENV = "DICOM_GATEWAY_MR_SERIES"
MR_INSTANCES = 3
MR_DEVICE = {"StationName": "MRROOM2", "DeviceSerialNumber": "SN-77102"}  # its own scanner
MR_DATES = {"StudyDate": "20010115", "SeriesDate": "20010115", "AcquisitionDate": "20010115",
            "ContentDate": "20010115", "InstanceCreationDate": "20010115",
            "SeriesTime": "101500", "AcquisitionTime": "101512", "ContentTime": "101512"}
# original values that must not be found anywhere in a stored file (with the identifiers)
ORIGINAL = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def mr_series(dest: Path) -> list[Path]:
    """The MR series of ``DICOM_GATEWAY_MR_SERIES`` (copied), else ``MR_small.dcm`` as one study
    with one series of :data:`MR_INSTANCES` instances."""
    given = os.environ.get(MR_ENV)
    if given:
        dest.mkdir(parents=True, exist_ok=True)
        sources = sorted(f for f in Path(given).rglob("*") if f.is_file())
        for number, source in enumerate(sources):
            (dest / f"mr_{number:05d}.dcm").write_bytes(source.read_bytes())
        return sorted(dest.glob("mr_*.dcm"))
    study, series = generate_uid(), generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for number in range(1, MR_INSTANCES + 1):
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), number
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in MR_DATES.items():
            setattr(ds, keyword, value)
        files.append(dest / f"mr_{number:05d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def stored(peer: OrthancPeer) -> tuple[list[bytes], list[pydicom.Dataset]]:
    """Every instance ``peer`` stored: the file bytes and the parsed dataset."""
    raw = [peer.file_bytes(i) for i in peer.instances()]
    return raw, [pydicom.dcmread(io.BytesIO(b)) for b in raw]


def test_ct_and_mr_studies_of_one_patient_reach_two_orthancs_de_identified(
        tmp_path: Path) -> None:
    first = copy_ct_series(tmp_path / "ct1")  # skips without the shared data
    second = copy_ct_series(tmp_path / "ct2", study_uid=generate_uid(), fresh_uids=True)
    mr = mr_series(tmp_path / "mr")
    fill(first + second)
    fill(mr, **MR_DEVICE)
    files = first + second + mr
    originals = [pydicom.dcmread(f) for f in files]
    ct_shown = str(originals[0].SOPInstanceUID)  # slice 1 of the real series, study 1
    mr_shown = str(originals[len(first) + len(second)].SOPInstanceUID)  # MR instance 1
    with OrthancPeer(tmp_path / "acme", aet="ACME") as acme, \
            OrthancPeer(tmp_path / "beta", aet="BETA") as beta:
        peers = {"acme": acme, "beta": beta}
        raw = gateway_config(tmp_path, {n: p.dicom_port for n, p in peers.items()},
                             REAL_SERIES_BLOCK)
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, files) == [0] * len(files)
            for peer in peers.values():
                assert peer.wait_for_count(len(files), timeout=120) == len(files), \
                    peer.log_tail()
        received = {n: stored(p) for n, p in peers.items()}
        # Orthanc's own view: one patient (the pseudonym) with the three studies
        for peer in peers.values():
            patients = peer.rest_json("/patients")
            assert len(patients) == 1 and len(peer.rest_json("/studies")) == 3
            assert len(peer.rest_json(f"/patients/{patients[0]}/studies")) == 3
    shifts, reports = check_received({n: ds for n, (_, ds) in received.items()}, originals,
                                     parse_deidentify(REAL_SERIES_BLOCK), [ct_shown, mr_shown],
                                     width=70)
    print(f"date shift in days: {shifts}")
    forbidden = {*IDENTIFIERS.values(), *MR_DEVICE.values(), "CompressedSamples", "4MR1"}
    forbidden |= {str(ds.get(k)) for ds in originals for k in ORIGINAL if ds.get(k)}
    assert "20000401" in forbidden  # the CT's dates (and the MR's, whatever they are)
    for name, (blobs, _) in received.items():
        for blob in blobs:
            found = [v for v in forbidden if v.encode() in blob]
            assert not found, f"{name}: {found} in a stored file"
            assert pseudonym(name, IDENTIFIERS["PatientID"]).encode() in blob  # the search works
    if os.environ.get(WRITE_ENV):
        _write_tables(Path(os.environ[WRITE_ENV]), reports, ct_shown, mr_shown, shifts)


def _write_tables(path: Path, reports: dict[tuple[str, str], Report], ct: str, mr: str,
                  shifts: dict[str, int]) -> None:
    parts = ["# Received by Orthanc: attribute -> action -> received value", "",
             "Written by `tests/test_deid_orthanc.py` (`DICOM_GATEWAY_WRITE_DEID_RECEIVED`). "
             f"Date shift of the patient: {shifts} days. Values up to 70 characters.", ""]
    for title, sop in (("CT: slice 1 of the real 18-slice series (study 1)", ct),
                       ("MR: instance 1 of the MR series", mr)):
        parts += [f"## {title}, as stored by Orthanc `acme`", "",
                  render_table(reports["acme", sop].rows, REAL_SERIES_BLOCK)]
    path.write_text("\n".join(parts), encoding="utf-8")

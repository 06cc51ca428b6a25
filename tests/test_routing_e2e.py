"""Acceptance (b): two partners (Orthanc and a pynetdicom SCP); rules by modality, AE and a tag
regex send studies to one, both or neither; no_route: reject answers a failure status; an
unknown calling AE is rejected at association. Also the Explicit VR Little Endian fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from gwutil import base_config, metric, partner, running_gateway, sample, scrape, send
from peers import RecordingSCP, pixel_sha256_of
from peers_orthanc import OrthancPeer
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

ROUTES = [
    {"name": "ct-to-orthanc", "match": {"modality": "CT"}, "to": ["orthanc"],
     "profile": "passthrough"},
    {"name": "modality-to-recorder", "match": {"calling_ae": "MODALITY"}, "to": ["recorder"],
     "profile": "passthrough"},
    {"name": "research-to-both",
     "match": {"tags": {"SeriesDescription": {"regex": "(?i).*research.*"}}},
     "to": ["orthanc", "recorder"], "profile": "passthrough"},
]


def test_rules_pick_one_both_or_neither(tmp_path: Path, orthanc: OrthancPeer,
                                        recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool",
                      [partner("orthanc", orthanc.dicom_port, orthanc.aet),
                       partner("recorder", recording_scp.port, recording_scp.ae_title)], ROUTES)
    ct_only = sample("CT_small.dcm", SeriesDescription="clinical")
    mr_modality = sample("MR_small.dcm", SeriesDescription="clinical")
    mr_research = sample("MR_small.dcm", SeriesDescription="Research arm B")
    mr_nothing = sample("MR_small.dcm", SeriesDescription="clinical")
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        assert send(port, [ct_only, mr_research]) == [0, 0]
        assert send(port, [mr_modality], calling="MODALITY") == [0]
        assert send(port, [mr_nothing]) == [0x0124]  # no route -> Refused: Not Authorised
        with pytest.raises(ConnectionRefusedError):
            send(port, [ct_only], calling="STRANGER")  # not on the allow-list
        assert orthanc.wait_for_count(2, timeout=30) == 2
        assert recording_scp.wait_for_count(2, timeout=30) == 2
        samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    assert orthanc.sop_instance_uids() == {ct_only.SOPInstanceUID, mr_research.SOPInstanceUID}
    assert recording_scp.received_sops == {mr_modality.SOPInstanceUID, mr_research.SOPInstanceUID}
    assert metric(samples, "dicom_gateway_received_instances_total",
                  calling_ae="HOSPITAL_PACS", status="no_route") == 1
    assert metric(samples, "dicom_gateway_associations_total", result="rejected") == 1


def test_no_route_discard_and_no_route_partner(tmp_path: Path, recording_scp: RecordingSCP) -> None:
    parts = [partner("recorder", recording_scp.port, recording_scp.ae_title)]
    raw = base_config(tmp_path / "a", parts, [])
    raw["no_route"] = "discard"
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, [sample()]) == [0]
        assert not list((tmp_path / "a" / "inbox").iterdir())
    raw = base_config(tmp_path / "b", parts, [])
    raw["no_route"] = {"partner": "recorder", "profile": "passthrough"}
    with running_gateway(raw) as gw:
        ds = sample()
        assert send(gw.receiver.port or 0, [ds]) == [0]
        assert recording_scp.wait_for_count(1, timeout=30) == 1
    assert recording_scp.received_sops == {ds.SOPInstanceUID}


def test_partner_without_the_original_syntax_gets_explicit_little_endian(tmp_path: Path) -> None:
    names = ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
             "SC_rgb_rle_2frame.dcm"]
    files = [sample(n) for n in names]
    with RecordingSCP(accept_transfer_syntaxes=[ExplicitVRLittleEndian]) as scp:
        raw = base_config(tmp_path / "spool", [partner("plain", scp.port, scp.ae_title)],
                          [{"name": "all", "match": {}, "to": ["plain"], "profile": "passthrough"}])
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, files) == [0] * len(files)
            assert scp.wait_for_count(len(files), timeout=30) == len(files)
        assert {ts for _, ts in scp.received} == {ExplicitVRLittleEndian}
        assert scp.received_sops == {ds.SOPInstanceUID for ds in files}  # same instances
        for n, ds in zip(names, files, strict=True):
            assert scp.pixel_hashes[ds.SOPInstanceUID] == pixel_sha256_of(get_testdata_file(n)), n

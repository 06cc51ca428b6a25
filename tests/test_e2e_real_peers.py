"""Acceptance (a): DCMTK storescu -> gateway -> a real Orthanc, pixel data identical
(method none)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from gwutil import base_config, partner, running_gateway
from peers import dcmtk_storescu, pixel_sha256_of
from peers_orthanc import OrthancPeer


def _expected(files: list[Path]) -> dict[str, str | None]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): pixel_sha256_of(f)
            for f in files}


def test_ct_series_and_multiseries_study_reach_orthanc_unchanged(
        tmp_path: Path, orthanc: OrthancPeer, ct_series_dir: Path,
        multiseries_study_dir: Path) -> None:
    raw = base_config(tmp_path / "spool",
                      [partner("orthanc", orthanc.dicom_port, orthanc.aet)],
                      [{"name": "all", "match": {"calling_ae": "HOSPITAL_PACS"},
                        "to": ["orthanc"], "profile": "passthrough"}])
    ct = sorted(ct_series_dir.glob("*.dcm"))
    multi = sorted(multiseries_study_dir.glob("*.dcm"))
    expected = {**_expected(ct), **_expected(multi)}
    with running_gateway(raw) as gw:
        for files in (ct, multi):
            done = dcmtk_storescu(files, "127.0.0.1", gw.receiver.port or 0,
                                  calling_aet="HOSPITAL_PACS", called_aet="EGRESS_GW")
            assert done.returncode == 0, done.stdout + done.stderr
        assert orthanc.wait_for_count(len(expected), timeout=60) == len(expected)
    assert orthanc.sop_instance_uids() == set(expected)
    for sop, digest in expected.items():
        assert orthanc.pixel_sha256(sop) == digest, sop
    print(f"orthanc received {len(expected)} instances ({len(ct)} CT + {len(multi)} multi-series), "
          "pixel data identical")

"""Exercise the real-peer test helpers (Orthanc, pynetdicom SCP, DCMTK, sample data).

Run inside a private network namespace, e.g.::

    unshare --net bash -c 'ip link set lo up && .venv/bin/python -m pytest tests/test_peers.py -q'
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from peers import (
    DATA_ENV,
    DcmtkStoreSCP,
    OrthancPeer,
    RecordingSCP,
    copy_ct_series,
    dcmtk_storescu,
    free_port,
    in_private_netns,
    pixel_sha256_of,
    require_shared_data,
)
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

HOST = "127.0.0.1"


def source_index(files: list[Path]) -> dict[str, tuple[str, str | None]]:
    """SOPInstanceUID -> (transfer syntax UID, decoded pixel hash) of the source files."""
    index = {}
    for path in files:
        ds = pydicom.dcmread(path)
        index[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), pixel_sha256_of(ds))
    return index


def test_free_port_and_netns_detection() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert isinstance(in_private_netns(), bool)


def test_require_shared_data_skips_naming_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(pytest.skip.Exception, match="nowhere"):
        require_shared_data()


def test_copy_ct_series_replicates_into_one_series(tmp_path: Path) -> None:
    study_uid = generate_uid()
    files = copy_ct_series(tmp_path / "ct", n_instances=20, study_uid=study_uid)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len({ds.SOPInstanceUID for ds in datasets}) == 20
    assert {ds.StudyInstanceUID for ds in datasets} == {study_uid}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert pixel_sha256_of(files[18]) == pixel_sha256_of(files[0])


def test_build_multiseries_study_layout(multiseries_study_dir: Path) -> None:
    datasets = [pydicom.dcmread(f) for f in sorted(multiseries_study_dir.iterdir())]
    assert len(datasets) >= 6
    assert len({ds.SeriesInstanceUID for ds in datasets}) >= 3
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({(ds.StudyInstanceUID, ds.PatientID, str(ds.PatientName)) for ds in datasets}) == 1
    assert all(ds.Modality for ds in datasets)
    assert len({ds.file_meta.TransferSyntaxUID for ds in datasets}) >= 5


def test_ct_series_to_orthanc_keeps_pixels(orthanc: OrthancPeer, ct_series_dir: Path) -> None:
    expected = source_index(sorted(ct_series_dir.iterdir()))
    result = dcmtk_storescu([ct_series_dir], HOST, orthanc.dicom_port, "GWTEST", orthanc.aet)
    assert result.returncode == 0, result.stderr
    assert orthanc.wait_for_count(18) == 18
    assert len(orthanc.instances()) == 18
    assert orthanc.sop_instance_uids() == set(expected)
    for sop_uid, (_, digest) in expected.items():
        assert orthanc.pixel_sha256(sop_uid) == digest


def test_multiseries_study_to_orthanc(orthanc: OrthancPeer, multiseries_study_dir: Path) -> None:
    expected = source_index(sorted(multiseries_study_dir.iterdir()))
    result = dcmtk_storescu(
        [multiseries_study_dir], HOST, orthanc.dicom_port, "GWTEST", orthanc.aet
    )
    assert result.returncode == 0, result.stderr
    assert orthanc.wait_for_count(len(expected)) == len(expected)
    assert len(orthanc.rest_json("/studies")) == 1
    assert len(orthanc.rest_json("/series")) == len(expected)
    for sop_uid, (ts, digest) in expected.items():
        stored = orthanc.dataset(sop_uid)
        assert stored.file_meta.TransferSyntaxUID == ts
        assert pixel_sha256_of(stored) == digest


def test_orthanc_stop_start_keeps_data_and_ports(orthanc: OrthancPeer, tmp_path: Path) -> None:
    files = copy_ct_series(tmp_path / "ct3", n_instances=3)
    assert dcmtk_storescu(files, HOST, orthanc.dicom_port, "GWTEST", orthanc.aet).returncode == 0
    ports = (orthanc.dicom_port, orthanc.http_port)
    orthanc.stop()
    assert not orthanc.running
    assert dcmtk_storescu(files, HOST, orthanc.dicom_port, "GWTEST", orthanc.aet).returncode != 0
    orthanc.start()
    assert (orthanc.dicom_port, orthanc.http_port) == ports
    assert orthanc.instance_count() == 3
    assert dcmtk_storescu(files, HOST, orthanc.dicom_port, "GWTEST", orthanc.aet).returncode == 0


def test_multiseries_study_to_recording_scp(
    recording_scp: RecordingSCP, multiseries_study_dir: Path
) -> None:
    expected = source_index(sorted(multiseries_study_dir.iterdir()))
    result = dcmtk_storescu([multiseries_study_dir], HOST, recording_scp.port, "GWTEST", "RECORDER")
    assert result.returncode == 0, result.stderr
    assert recording_scp.wait_for_count(len(expected)) == len(expected)
    # every file travels in its own (possibly compressed) transfer syntax
    assert dict(recording_scp.received) == {sop: ts for sop, (ts, _) in expected.items()}
    assert recording_scp.pixel_hashes == {sop: digest for sop, (_, digest) in expected.items()}
    assert recording_scp.duplicates == 0
    assert recording_scp.connection_count == 1


def test_recording_scp_restart_counts_duplicates(
    tmp_path: Path, multiseries_study_dir: Path
) -> None:
    files = sorted(multiseries_study_dir.iterdir())[:2]
    with RecordingSCP(store_dir=tmp_path) as scp:
        assert dcmtk_storescu(files, HOST, scp.port, "GWTEST", scp.ae_title).returncode == 0
        scp.stop()
        scp.start()
        assert dcmtk_storescu(files, HOST, scp.port, "GWTEST", scp.ae_title).returncode == 0
        assert scp.wait_for_count(4) == 4
        assert scp.duplicates == 2
        assert set(scp.sop_counts.values()) == {2}
        assert scp.connection_count == 2
        assert len(list(tmp_path.glob("*.dcm"))) == 2


def test_recording_scp_failure_status_fails_storescu(multiseries_study_dir: Path) -> None:
    with RecordingSCP(status=0xA700) as scp:
        result = dcmtk_storescu(
            [multiseries_study_dir], HOST, scp.port, "GWTEST", scp.ae_title, extra_args=["-v"]
        )
        assert result.returncode == 0xA7  # storescu exits with the status' high byte
        assert "Refused: OutOfResources" in result.stderr + result.stdout
        assert scp.attempts == 1  # storescu halts after the first failure
        assert scp.received == []


def test_recording_scp_delay(multiseries_study_dir: Path) -> None:
    files = sorted(multiseries_study_dir.iterdir())[:2]
    with RecordingSCP(delay_seconds=0.3) as scp:
        started = time.monotonic()
        assert dcmtk_storescu(files, HOST, scp.port, "GWTEST", scp.ae_title).returncode == 0
        assert time.monotonic() - started >= 0.6


def test_recording_scp_restricted_syntaxes(multiseries_study_dir: Path) -> None:
    by_name = {p.name.split("_", 1)[1]: p for p in multiseries_study_dir.iterdir()}
    explicit, rle = by_name["CT_small.dcm"], by_name["MR_small_RLE.dcm"]
    with RecordingSCP(accept_transfer_syntaxes=[ImplicitVRLittleEndian]) as scp:
        # storescu converts explicit -> implicit VR itself but cannot decompress RLE
        result = dcmtk_storescu([explicit, rle], HOST, scp.port, "GWTEST", scp.ae_title, ["-nh"])
        assert "Store Failed" in result.stderr  # but returncode is 0 with -nh
        assert scp.received == [(pydicom.dcmread(explicit).SOPInstanceUID, ImplicitVRLittleEndian)]
        assert list(scp.pixel_hashes.values()) == [pixel_sha256_of(explicit)]


def test_multiseries_study_to_dcmtk_storescp(tmp_path: Path, multiseries_study_dir: Path) -> None:
    expected = source_index(sorted(multiseries_study_dir.iterdir()))
    with DcmtkStoreSCP(tmp_path / "received") as scp:
        result = dcmtk_storescu([multiseries_study_dir], HOST, scp.port, "GWTEST", scp.ae_title)
        assert result.returncode == 0, result.stderr
        assert scp.wait_for_count(len(expected)) == len(expected)
        assert source_index(scp.files()) == expected

"""Acceptance (e): bad input gets the right DIMSE status or a quarantine entry; the gateway
keeps serving and nothing else is affected."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from gwutil import (
    base_config,
    metric,
    partner,
    running_gateway,
    sample,
    scrape,
    send,
    uid_secret,
    with_seal,
)
from peers import RecordingSCP, free_port
from pydicom import dcmread
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_gateway.protect import Outcome, registry
from dicom_gateway.protect.method import failed
from dicom_gateway.protect.options import NoneOptions
from dicom_gateway.reactor_guard import guard
from dicom_gateway.seal.uids import derive_uid

ALL = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]


def _send_files(port: int, paths: list[Path]) -> list[int]:
    """Send files without decoding them (pynetdicom streams the bytes after the file meta)."""
    from pynetdicom import _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # as the gateway's forwarder does
    ae = AE(ae_title="HOSPITAL_PACS")
    assoc = guard(ae.associate("127.0.0.1", port, ae_title="EGRESS_GW", contexts=[
        build_context(CTImageStorage, ["1.2.840.10008.1.2.1"])]))
    assert assoc.is_established
    try:
        return [int(getattr(assoc.send_c_store(p), "Status", -1)) for p in paths]
    finally:
        assoc.release()


def _echo(port: int) -> int:
    ae = AE(ae_title="HOSPITAL_PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="EGRESS_GW")
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_malformed_instances_get_failure_statuses(tmp_path: Path,
                                                   recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ALL)
    good = tmp_path / "good.dcm"
    sample("CT_small.dcm").save_as(good, enforce_file_format=True)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 4000])  # Pixel Data cut short
    corrupt = tmp_path / "corrupt.dcm"
    pos = data.index(b"\x08\x00\x60\x00")  # (0008,0060) Modality, explicit VR: tag VR len
    corrupt.write_bytes(data[:pos + 6] + b"\xff\xff" + data[pos + 8:])  # absurd length
    wrong_class = tmp_path / "wrong_class.dcm"
    ds = sample("CT_small.dcm")
    ds.SOPClassUID = "1.2.3.4.5.6.7"  # not the class of the request/context
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # what the request will say
    ds.save_as(wrong_class, enforce_file_format=False)

    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        statuses = _send_files(port, [truncated, corrupt, wrong_class, good])
        assert statuses[0] in (0xA900, 0xC000), hex(statuses[0])
        assert statuses[1] == 0xC000, hex(statuses[1])
        assert statuses[2] == 0xA900, hex(statuses[2])
        assert statuses[3] == 0x0000  # the good one on the same association is unaffected
        assert recording_scp.wait_for_count(1, timeout=30) == 1
        samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    assert metric(samples, "dicom_gateway_received_instances_total",
                  calling_ae="HOSPITAL_PACS", status="invalid") == 3


def test_unknown_sop_class_context_is_rejected(tmp_path: Path, recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ALL)
    with running_gateway(raw) as gw:
        ae = AE(ae_title="HOSPITAL_PACS")
        assoc = ae.associate("127.0.0.1", gw.receiver.port or 0, ae_title="EGRESS_GW", contexts=[
            build_context("1.2.3.4.5.6.7.8", ["1.2.840.10008.1.2.1"]),
            build_context(CTImageStorage, ["1.2.840.10008.1.2.1"])])
        try:
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        finally:
            assoc.release()
        assert accepted == {CTImageStorage} and rejected == {"1.2.3.4.5.6.7.8"}
        assert _echo(gw.receiver.port or 0) == 0


def test_missing_pixel_data_where_the_route_needs_it(tmp_path: Path,
                                                     recording_scp: RecordingSCP) -> None:
    routes = [{"name": "needs", "match": {}, "to": ["recorder"], "profile": "needs-pixels"}]
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], routes)
    no_pixels = sample("CT_small.dcm")
    del no_pixels.PixelData
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, [no_pixels, sample("CT_small.dcm")]) == [0xA900, 0]
        assert recording_scp.wait_for_count(1, timeout=30) == 1


class _Exploding:
    """A protection method that fails on instances whose series description says so."""

    name = "exploding"

    def __init__(self, options: object) -> None:
        pass

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        out = []
        for p in paths:
            if "EXPLODE" in str(dcmread(p, stop_before_pixels=True).get("SeriesDescription", "")):
                out.append(failed(p, "unsupported_pixels", "this test method refuses it"))
            else:
                out.append(Outcome(source=p, output=p))
        return out


def _with_test_method(tmp_path: Path, recording_scp: RecordingSCP,
                      monkeypatch: pytest.MonkeyPatch, name: str, method: type) -> dict:
    """A sealed gateway config routing everything through ``method`` (registered for this
    test only: other tests enumerate the methods a profile can name)."""
    monkeypatch.setitem(registry._METHODS, name, (method, NoneOptions))
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)],
                      [{"name": "all", "match": {}, "to": ["recorder"], "profile": "p"}])
    raw["profiles"]["p"] = {"method": name}
    return with_seal(raw, tmp_path / "keys")


def _only_good_left_and_bad_quarantined(tmp_path: Path, recording_scp: RecordingSCP,
                                        good: Any, bad: Any) -> dict:
    """Assert the partner got only ``good`` (sealed, under its derived UID) and ``bad`` sits in
    quarantine; return its reason record."""
    secret = uid_secret(tmp_path / "keys")
    assert recording_scp.received_sops == {derive_uid(secret, "recorder", good.SOPInstanceUID)}
    q = list((tmp_path / "spool" / "quarantine" / "recorder").glob("*.dcm"))
    assert len(q) == 1 and bad.SOPInstanceUID in q[0].name
    return json.loads(q[0].with_name(q[0].name[:-4] + ".reason.json").read_text())


def test_protection_failure_quarantines_fail_closed(tmp_path: Path, recording_scp: RecordingSCP,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _with_test_method(tmp_path, recording_scp, monkeypatch, "exploding", _Exploding)
    bad, good = sample(SeriesDescription="EXPLODE"), sample(SeriesDescription="fine")
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, [bad, good]) == [0, 0]
        assert recording_scp.wait_for_count(1, timeout=30) == 1
        samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    reason = _only_good_left_and_bad_quarantined(tmp_path, recording_scp, good, bad)
    assert reason["reason"] == "unsupported_pixels" and reason["profile"] == "p"
    assert metric(samples, "dicom_gateway_quarantined_instances_total",
                  partner="recorder", reason="unsupported_pixels") == 1


class _CrashingOnBatch:
    """A method with a bug: it raises on any batch holding an instance described "CRASH"."""

    name = "crashing"

    def __init__(self, options: object) -> None:
        pass

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        for p in paths:
            if str(dcmread(p, stop_before_pixels=True).get("SeriesDescription", "")) == "CRASH":
                raise ValueError("a bug in the method")
        return [Outcome(source=p, output=p) for p in paths]


def test_a_method_bug_quarantines_only_the_instance_that_trips_it(
        tmp_path: Path, recording_scp: RecordingSCP, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _with_test_method(tmp_path, recording_scp, monkeypatch, "crashing", _CrashingOnBatch)
    good, bad = sample(SeriesDescription="fine"), sample(SeriesDescription="CRASH")
    bad.StudyInstanceUID, bad.SeriesInstanceUID = good.StudyInstanceUID, good.SeriesInstanceUID
    with running_gateway(raw) as gw:  # one study, one series: one batch with both
        assert send(gw.receiver.port or 0, [good, bad]) == [0, 0]
        assert recording_scp.wait_for_count(1, timeout=30) == 1
    reason = _only_good_left_and_bad_quarantined(tmp_path, recording_scp, good, bad)
    assert reason["reason"] == "method_error" and "a bug in the method" in reason["message"]


@pytest.fixture
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs for the disk-full test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_spool_disk_full_answers_out_of_resources_and_keeps_serving(tmp_path: Path,
                                                                    tiny_spool: Path) -> None:
    down_port = free_port()  # nothing listens: everything stays in the spool
    raw = base_config(tiny_spool / "spool", [partner("recorder", down_port)], ALL)
    big = []
    for _ in range(12):  # 512 x 512 x 16 bit = 512 KiB each: a 3 MiB spool is full after ~5
        ds = sample("CT_small.dcm")
        ds.Rows = ds.Columns = 512
        ds.PixelData = bytes(512 * 512 * 2)
        big.append(ds)
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        statuses = send(port, big)
        assert 0xA700 in statuses, [hex(s) for s in statuses]
        first_full = statuses.index(0xA700)
        assert all(s == 0 for s in statuses[:first_full])
        assert _echo(port) == 0  # still serving
        stored = [p for state in ("inbox", "work", "outbox")  # waiting, or streamed on
                  for p in (tiny_spool / "spool" / state).rglob("*.dcm")]
        assert len(stored) == first_full  # every acknowledged instance is in the spool, intact
        for path in stored:
            assert dcmread(path).SOPInstanceUID
        leftovers = [p for p in (tiny_spool / "spool" / "tmp").iterdir() if p.stat().st_size]
        assert not leftovers  # no half-written files (empty ones are the ready-made pool)
        samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    assert metric(samples, "dicom_gateway_received_instances_total",
                  calling_ae="HOSPITAL_PACS", status="out_of_resources") >= 1

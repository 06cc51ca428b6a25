"""Acceptance (d): with the partner down, instances wait with growing, bounded backoff; when it
comes back everything arrives; past max attempts they land in failed/ with a reason and the
dead-letter metric counts them. Also DIMSE warning vs failure mapping."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gwutil import base_config, metric, partner, running_gateway, sample, scrape, send, wait_metric
from peers import RecordingSCP, free_port

from dicom_gateway.delivery import PartnerQueue
from dicom_gateway.metrics import ForwardMetrics
from dicom_gateway.settings import PartnerConfig, RetryConfig
from dicom_gateway.spool import Spool

ALL = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]


def _attempts(gw: object) -> float:
    return metric(scrape(gw.endpoint.port), "dicom_gateway_forward_attempts_total",  # type: ignore[attr-defined]
                  partner="recorder")


def test_backoff_is_bounded_and_everything_arrives_when_partner_returns(tmp_path: Path) -> None:
    scp = RecordingSCP()  # not started: the partner is down
    raw = base_config(tmp_path / "spool", [partner("recorder", scp.port, associations=2)], ALL)
    raw["retry"] = {"initial_seconds": 0.25, "multiplier": 2.0, "max_seconds": 2.0,
                    "max_attempts": 50, "jitter": 0.1}
    instances = [sample() for _ in range(20)]
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, instances) == [0] * 20
        per_second = []
        last = _attempts(gw)
        for _ in range(8):
            time.sleep(1.0)
            now = _attempts(gw)
            per_second.append(int(now - last))
            last = now
        print(f"\nattempts per second while down (20 queued, 2 associations): {per_second}")
        # one probe per worker per hold period: the hold grows 0.25 -> 2 s, so at most
        # 2 workers x (1 / 0.225 s) per second at first and ~1 per second at the cap
        assert max(per_second) <= 10
        assert sum(per_second[-3:]) <= 2 * 3 * 2  # at the 2 s cap: <= 1/s per worker
        assert sum(per_second) < 20 * 8 / 2  # far fewer than one connection per entry and hold
        scp.start()
        try:
            assert scp.wait_for_count(20, timeout=30) == 20
            assert scp.received_sops == {ds.SOPInstanceUID for ds in instances}
            wait_metric(gw.endpoint.port, "dicom_gateway_forwarded_instances_total", 20,  # type: ignore[union-attr]
                        partner="recorder", result="success")
            samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
        finally:
            scp.stop()
    assert metric(samples, "dicom_gateway_forwarded_instances_total",
                  partner="recorder", result="success") == 20
    assert metric(samples, "dicom_gateway_dead_letters_total", partner="recorder",
                  reason="connection_failed") == 0
    assert not list((tmp_path / "spool" / "outbox" / "recorder").glob("*.dcm"))


def test_past_max_attempts_entries_are_dead_lettered(tmp_path: Path) -> None:
    scp = RecordingSCP()  # never started
    raw = base_config(tmp_path / "spool", [partner("recorder", scp.port, associations=1)], ALL)
    raw["retry"] = {"initial_seconds": 0.1, "multiplier": 2.0, "max_seconds": 0.4,
                    "max_attempts": 3, "jitter": 0.1}
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, [sample() for _ in range(5)]) == [0] * 5
        deadline = time.monotonic() + 30
        failed_dir = tmp_path / "spool" / "failed" / "recorder"
        while time.monotonic() < deadline and len(list(failed_dir.glob("*.dcm"))) < 5:
            time.sleep(0.2)
        dead = 0.0
        while time.monotonic() < deadline and dead < 5:  # metrics arrive every 0.25 s
            dead = sum(v for (name, _), v in scrape(gw.endpoint.port).items()  # type: ignore[union-attr]
                       if name == "dicom_gateway_dead_letters_total")
            time.sleep(0.05)
    failed = sorted(failed_dir.glob("*.dcm"))
    assert len(failed) == 5
    for f in failed:
        reason = json.loads(f.with_name(f.name[:-4] + ".reason.json").read_text())
        assert reason["reason"] == "connection_failed" and reason["attempts"] == 3
    assert dead == 5


def test_warning_is_done_failure_is_given_up_out_of_resources_is_retried(tmp_path: Path) -> None:
    with RecordingSCP(status=0xB000) as scp:
        raw = base_config(tmp_path / "w", [partner("recorder", scp.port)], ALL)
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [sample()]) == [0]
            assert scp.wait_for_count(1, timeout=20) == 1
            wait_metric(gw.endpoint.port, "dicom_gateway_forwarded_instances_total", 1,  # type: ignore[union-attr]
                        partner="recorder", result="warning")
            samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
        assert metric(samples, "dicom_gateway_forwarded_instances_total",
                      partner="recorder", result="warning") == 1

    with RecordingSCP(status=0xC000) as scp:
        raw = base_config(tmp_path / "f", [partner("recorder", scp.port)], ALL)
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [sample()]) == [0]
            failed_dir = tmp_path / "f" / "failed" / "recorder"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not list(failed_dir.glob("*.reason.json")):
                time.sleep(0.1)
        reason = json.loads(next(failed_dir.glob("*.reason.json")).read_text())
        assert reason["reason"] == "refused" and reason["status"] == 0xC000
        assert scp.attempts == 1  # a refusal is not retried

    with RecordingSCP(status=0xA700) as scp:
        raw = base_config(tmp_path / "r", [partner("recorder", scp.port)], ALL)
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [sample()]) == [0]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and scp.attempts < 2:
                time.sleep(0.1)
            assert scp.attempts >= 2  # out of resources: tried again
            scp.status = 0x0000
            assert scp.wait_for_count(1, timeout=20) == 1


def test_the_failure_log_line_counts_given_up_entries_apart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool")
    outbox = spool.root / "outbox" / "p"
    outbox.mkdir(parents=True)
    ds = sample()
    ds.save_as(outbox / "study_sop.dcm", enforce_file_format=True)
    config = PartnerConfig("p", "NOBODY", "127.0.0.1", free_port(), "GW", associations=1,
                           retry=RetryConfig(max_attempts=1))  # the first failure gives up
    queue = PartnerQueue(config, spool, ForwardMetrics())
    queue.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (spool.root / "failed" / "p").is_dir():
            time.sleep(0.05)
    finally:
        queue.stop()
    assert [e.name for _, e in spool.entries("failed")] == ["study_sop"]
    line = next(r.getMessage() for r in caplog.records if "forward to p failed" in r.getMessage())
    assert line.endswith("; 0 entries rescheduled, 1 given up (failed/)"), line

"""Spool records: typed, versioned, and a spool written by the previous release still works.

The ``PREVIOUS_*`` texts are exactly what the release before versioned records wrote (commit
a7af01c: ``receive.py`` dumped ``d.__dict__`` of each destination, compact with sorted keys;
``delivery.py`` and ``spool.py`` wrote plain dicts), so an upgrade over a full spool is covered.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from gwutil import base_config, partner, running_gateway, sample
from peers import RecordingSCP

from dicom_gateway.errors import RecordError
from dicom_gateway.records import RetryState, RoutingRecord, SetAsideReason
from dicom_gateway.route import Destination
from dicom_gateway.spool import Entry, Spool

ALL = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]
PREVIOUS_ROUTE = ('{"called_ae":"EGRESS_GW","calling_ae":"HOSPITAL_PACS","destinations":'
                  '[{"partner":"recorder","profile":"passthrough","route":"all"}],'
                  '"series":"%s","study":"%s"}')
PREVIOUS_STATE = ('{"attempts": 3, "last_error": "cannot associate with PARTNER@127.0.0.1:104", '
                  '"not_before": 1700000000.0, "reason": "connection_failed"}')
PREVIOUS_QUARANTINE = """{
  "message": "method 'adversarial_perturbation' failed: RuntimeError: boom",
  "profile": "passthrough",
  "reason": "method_error",
  "record": %s,
  "time": "2025-01-01T00:00:00Z"
}"""
PREVIOUS_FAILED = """{
  "attempts": 1,
  "message": "status 0xC000 ",
  "partner": "recorder",
  "reason": "refused",
  "status": 49152,
  "time": "2025-01-01T00:00:00Z"
}"""


def test_records_round_trip_with_a_version() -> None:
    record = RoutingRecord("A", "GW", "1.2.3", "1.2.3.4", (Destination("p1", "none", "r"),))
    assert json.loads(record.to_json())["version"] == RoutingRecord.VERSION
    assert RoutingRecord.from_json(record.to_json()) == record
    state = RetryState(2, "no response", "no_response", 1700000000.5)
    assert RetryState.from_json(state.to_json()) == state
    reason = SetAsideReason("method_error", "boom", time="t", profile="x", record=record)
    assert SetAsideReason.from_json(reason.to_json()) == reason


def test_previous_release_records_are_read() -> None:
    record = RoutingRecord.from_json(PREVIOUS_ROUTE % ("1.2.3.4", "1.2.3"))
    assert record == RoutingRecord("HOSPITAL_PACS", "EGRESS_GW", "1.2.3", "1.2.3.4",
                                   (Destination("recorder", "passthrough", "all"),))
    assert RetryState.from_json(PREVIOUS_STATE) == RetryState(
        3, "cannot associate with PARTNER@127.0.0.1:104", "connection_failed", 1700000000.0)
    quarantined = SetAsideReason.from_json(PREVIOUS_QUARANTINE % (PREVIOUS_ROUTE % ("4", "3")))
    assert quarantined.record is not None and quarantined.record.study == "3"
    assert quarantined.reason == "method_error" and quarantined.profile == "passthrough"
    failed = SetAsideReason.from_json(PREVIOUS_FAILED)
    assert (failed.attempts, failed.status, failed.partner) == (1, 0xC000, "recorder")
    no_record = SetAsideReason.from_json('{"reason": "missing_route_record", "message": "m", '
                                         '"record": {}, "time": "t"}')
    assert no_record.record is None


@pytest.mark.parametrize("text", ['{"version": 99, "study": "1", "destinations": []}',
                                  '["not", "a", "record"]', "{truncated",
                                  '{"study": "1", "destinations": [{"partner": 7}]}'])
def test_a_record_from_a_newer_release_or_corrupt_is_refused(text: str) -> None:
    with pytest.raises(RecordError):
        RoutingRecord.from_json(text)


def test_an_unreadable_routing_record_reads_as_missing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = spool.store_incoming("1.2.3.4.5", [b"DICM"], RoutingRecord(
        "A", "GW", "1.2.3", "1.2.3.4", (Destination("p1", "none", "r"),)))
    entry.record_path.write_text('{"version": 99}')
    assert spool.record(entry) is None


def _previous_inbox(spool: Path, ds: Any) -> None:
    """An instance received by the previous release, waiting in the inbox."""
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    data = (PREVIOUS_ROUTE % (series, study)).encode()
    key = hashlib.sha256(data).hexdigest()[:16]
    folder = spool / "inbox" / study
    folder.mkdir(parents=True)
    (folder / f"{key}.route.json").write_bytes(data)
    ds.save_as(folder / f"{sop}~{key}.dcm", enforce_file_format=True)


def _previous_set_aside(spool: Path, state: str, ds: Any, reason: str) -> Entry:
    folder = spool / state / "recorder"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{ds.StudyInstanceUID}_{ds.SOPInstanceUID}"
    ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
    (folder / f"{name}{'.state.json' if state == 'outbox' else '.reason.json'}").write_text(reason)
    return Entry(folder / f"{name}.dcm")


def test_a_spool_written_by_the_previous_release_is_served(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    inbox, outbox, quarantined, failed = sample(), sample(), sample(), sample()
    _previous_inbox(root, inbox)
    _previous_set_aside(root, "outbox", outbox, PREVIOUS_STATE)
    q = _previous_set_aside(root, "quarantine", quarantined, PREVIOUS_QUARANTINE % (
        PREVIOUS_ROUTE % (quarantined.SeriesInstanceUID, quarantined.StudyInstanceUID)))
    f = _previous_set_aside(root, "failed", failed, PREVIOUS_FAILED)
    with RecordingSCP() as scp:
        raw = base_config(root, [partner("recorder", scp.port)], ALL)
        with running_gateway(raw) as gw:
            assert scp.wait_for_count(2, timeout=30) == 2  # inbox (old record) + outbox (old state)
            gw.spool.requeue("quarantine", q, "recorder")  # the old reason's record routes it
            gw.spool.requeue("failed", f, "recorder")
            assert scp.wait_for_count(4, timeout=30) == 4
        assert scp.received_sops == {ds.SOPInstanceUID for ds in (inbox, outbox, quarantined,
                                                                 failed)}
    assert not list((root / "quarantine" / "recorder").iterdir())
    assert not list((root / "failed" / "recorder").iterdir())

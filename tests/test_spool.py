"""The spool state machine: commit order, claim, recovery after a crash at any point."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dicom_gateway.records import RoutingRecord, SetAsideReason
from dicom_gateway.route import Destination
from dicom_gateway.spool import Entry, Spool, safe_key

RECORD = RoutingRecord(calling_ae="A", called_ae="GW", study="1.2.3", series="1.2.3.4",
                       destinations=(Destination("p1", "none", "r"),))


def _store(spool: Spool, sop: str = "1.2.3.4.5") -> Entry:
    return spool.store_incoming(sop, [b"DICM-", b"bytes-" + sop.encode()], RECORD)


def test_store_commits_dcm_and_shared_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = _store(spool), _store(spool, "1.2.3.4.6")
    assert first.path.parent == tmp_path / "inbox" / "1.2.3"
    assert first.sop_key == "1.2.3.4.5" and first.path.read_bytes() == b"DICM-bytes-1.2.3.4.5"
    assert first.record_path == second.record_path  # one routing record for the series
    assert spool.record(first) == RECORD
    assert len(list(first.path.parent.glob("*.route.json"))) == 1
    assert not list((tmp_path / "tmp").iterdir())
    assert first.path.stat().st_mode & 0o777 == 0o600


def test_safe_key_hashes_odd_uids() -> None:
    assert safe_key("1.2.3") == "1.2.3"
    odd = safe_key("../../etc/passwd")
    assert odd.startswith("h") and "/" not in odd and len(odd) == 41


def test_claim_then_crash_is_requeued(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    claimed = spool.claim([_store(spool)])
    assert claimed[0].path.parent == tmp_path / "work" / "1.2.3"
    assert spool.record(claimed[0]) == RECORD
    spool.remove_empty_study("1.2.3")  # inbox has no instance left: its record goes
    counts = Spool(tmp_path).recover()
    assert counts["work_requeued"] == 1
    entries = spool.inbox_entries("1.2.3")
    assert [e.sop_key for e in entries] == ["1.2.3.4.5"] and spool.record(entries[0]) == RECORD


def test_recovery_removes_partial_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "tmp" / "123-half.dcm").write_bytes(b"half")
    study = tmp_path / "inbox" / "1.2.3"
    study.mkdir(parents=True)
    (study / "abcd.route.json").write_text(RECORD.to_json())  # record committed, no instance
    counts = spool.recover()
    assert counts == {"tmp_removed": 1, "work_requeued": 0, "orphans_removed": 1}
    assert not study.exists()


def test_instance_without_record_is_quarantined_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    study = tmp_path / "inbox" / "1.2.3"
    study.mkdir(parents=True)
    (study / "7.7~abcd.dcm").write_bytes(b"data")
    spool.recover()
    q = tmp_path / "quarantine" / "_inbox" / "7.7~abcd.dcm"
    assert q.read_bytes() == b"data"
    reason = json.loads(q.with_name("7.7~abcd.reason.json").read_text())
    assert reason["reason"] == "missing_route_record"


def test_outbox_link_dead_letter_and_requeue(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    work = spool.claim([_store(spool)])[0]
    out = spool.commit_outbox("p1", "1.2.3_1.2.3.4.5", spool.stage_output(work.path))
    assert os.stat(out.path).st_ino == os.stat(work.path).st_ino  # hard link, no copy
    spool.finish_work(work)
    failed = spool.dead_letter(out, "p1", SetAsideReason("refused", "status 0xC000"))
    assert failed.set_aside_reason().reason == "refused"
    assert [e.name for _, e in spool.entries("failed")] == ["1.2.3_1.2.3.4.5"]
    spool.requeue("failed", failed, "p1")
    assert [e.name for e in spool.outbox_entries("p1")] == ["1.2.3_1.2.3.4.5"]
    assert not list(spool.entries("failed"))


def test_quarantine_keeps_routing_and_requeues_to_inbox(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    work = spool.claim([_store(spool)])[0]
    q = spool.quarantine(work, "p1", SetAsideReason("method_error", "boom"))
    spool.finish_work(work)
    assert q.set_aside_reason().record.study == "1.2.3"
    spool.requeue("quarantine", q, "p1")
    entries = spool.inbox_entries("1.2.3")
    assert [e.sop_key for e in entries] == ["1.2.3.4.5"]
    assert entries[0].path.read_bytes() == b"DICM-bytes-1.2.3.4.5"
    assert not list(spool.entries("quarantine"))


def test_the_spool_is_private_to_the_gateway(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")  # what `serve` does first with gateway.spool_dir
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700
    for state in ("tmp", "inbox", "work", "outbox", "failed", "quarantine"):
        assert (tmp_path / "spool" / state).stat().st_mode & 0o777 == 0o700, state
    (tmp_path / "old" / "inbox").mkdir(parents=True, mode=0o755)  # as an earlier release left it
    os.chmod(tmp_path / "old" / "inbox", 0o755)
    Spool(tmp_path / "old")
    assert (tmp_path / "old" / "inbox").stat().st_mode & 0o777 == 0o700

"""The spool state machine: commit order, claim, recovery after a crash at any point."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dicom_gateway.spool import Entry, Spool, safe_key

META = {"study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5", "destinations": [
    {"partner": "p1", "profile": "none", "route": "r"}]}


def _store(spool: Spool, sop: str = "1.2.3.4.5") -> Entry:
    return spool.store_incoming("1.2.3", sop, b"DICM-bytes-" + sop.encode(), {**META, "sop": sop})


def test_store_commits_dcm_and_sidecar(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entry = _store(spool)
    assert entry.path == tmp_path / "inbox" / "1.2.3" / "1.2.3.4.5.dcm"
    assert entry.read_json(".json")["sop"] == "1.2.3.4.5"
    assert not list((tmp_path / "tmp").iterdir())


def test_safe_key_hashes_odd_uids() -> None:
    assert safe_key("1.2.3") == "1.2.3"
    odd = safe_key("../../etc/passwd")
    assert odd.startswith("h") and "/" not in odd and len(odd) == 41


def test_claim_then_crash_is_requeued(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    claimed = spool.claim(_store(spool))
    assert claimed.path.parent == tmp_path / "work" / "1.2.3"
    counts = Spool(tmp_path).recover()
    assert counts["work_requeued"] == 1
    assert [e.name for e in spool.inbox_entries("1.2.3")] == ["1.2.3.4.5"]


def test_recovery_removes_partial_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "tmp" / "123-half.dcm").write_bytes(b"half")
    study = tmp_path / "inbox" / "1.2.3"
    study.mkdir(parents=True)
    (study / "9.9.json").write_text(json.dumps(META))  # sidecar committed, .dcm never was
    counts = spool.recover()
    assert counts == {"tmp_removed": 1, "work_requeued": 0, "orphans_removed": 1}
    assert not study.exists()


def test_dcm_without_sidecar_is_quarantined_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    study = tmp_path / "inbox" / "1.2.3"
    study.mkdir(parents=True)
    (study / "7.7.dcm").write_bytes(b"data")
    spool.recover()
    q = tmp_path / "quarantine" / "_inbox" / "7.7.dcm"
    assert q.read_bytes() == b"data"
    assert json.loads(q.with_name("7.7.reason.json").read_text())["reason"] == "missing_sidecar"


def test_outbox_link_dead_letter_and_requeue(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    work = spool.claim(_store(spool))
    out = spool.commit_outbox("p1", "1.2.3_1.2.3.4.5", spool.stage_output(work.path))
    assert os.stat(out.path).st_ino == os.stat(work.path).st_ino  # hard link, no copy
    spool.finish_work(work)
    failed = spool.dead_letter(out, "p1", {"reason": "refused", "message": "status 0xC000"})
    assert failed.read_json(".reason.json")["reason"] == "refused"
    assert [e.name for _, e in spool.entries("failed")] == ["1.2.3_1.2.3.4.5"]
    spool.requeue("failed", failed, "p1")
    assert [e.name for e in spool.outbox_entries("p1")] == ["1.2.3_1.2.3.4.5"]
    assert not list(spool.entries("failed"))


def test_quarantine_keeps_routing_and_requeues_to_inbox(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    work = spool.claim(_store(spool))
    q = spool.quarantine(work, "p1", {"reason": "method_error", "message": "boom"})
    spool.finish_work(work)
    assert q.read_json(".reason.json")["meta"]["study"] == "1.2.3"
    spool.requeue("quarantine", q, "p1")
    assert [e.name for e in spool.inbox_entries("1.2.3")] == ["1.2.3.4.5"]

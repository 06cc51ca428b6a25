"""The audit trail and leak tracing (issue 13, items 3 and 4; decision 0020).

Acceptance (e): the chain verifies after a run with two partners and a failed delivery (and
after the SIGKILLs of tests/test_crash_safety.py), a flipped byte anywhere in it is detected
with the record's sequence number, and "what went to partner P between T1 and T2" and "where
did study S go" answer correctly. Acceptance (f): ``trace`` names the right partner for
protected files of two partners, also after their private blocks are stripped, and says
"unknown" for a pass-through file.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from gwutil import base_config, partner, running_gateway, sample, send, with_seal
from peers import RecordingSCP, free_port

from dicom_gateway.audit import AuditTrail
from dicom_gateway.config import parse_config
from dicom_gateway.errors import AuditError, ConfigError

SECRET = bytes(range(32))
PATIENT = {"PatientName": "AUDIT^SECRET^PATIENT", "PatientID": "PID-AUDIT-4711"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_gateway.cli", *args],
                          capture_output=True, text=True, timeout=300)


def _small_trail(directory: Path) -> AuditTrail:
    trail = AuditTrail(directory, SECRET)
    trail.append("gateway_started", {"version": "test", "pid": 1, "partners": ["a", "b"]})
    trail.append("received", {"study": trail.identifier("1.2.3"),
                              "sop": trail.identifier("1.2.3.4"),
                              "destinations": [{"partner": "a", "profile": "p", "route": "r"}]})
    trail.append("forwarded", {"study": trail.identifier("1.2.3"),
                               "sop": trail.identifier("1.2.3.4"), "partner": "a",
                               "result": "success"})
    trail.append("gateway_stopped", {"pid": 1})
    return trail


# -- the chain ----------------------------------------------------------------------------------
def test_every_flipped_byte_is_detected_with_its_record(tmp_path: Path) -> None:
    trail = _small_trail(tmp_path / "audit")
    assert trail.verify().ok and trail.verify().count == 4
    (path,) = trail.files()
    data = path.read_bytes()
    ends = [i for i, b in enumerate(data) if b == 0x0A]
    for position in range(len(data)):
        seq = next(n for n, end in enumerate(ends, 1) if position <= end)
        path.write_bytes(data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1:])
        verdict = AuditTrail(tmp_path / "audit", SECRET).verify()
        assert not verdict.ok, position
        assert (f"seq {seq} " in (verdict.problem or "")
                or (seq == 1 and "first record" in (verdict.problem or ""))), \
            (position, verdict.problem)
    path.write_bytes(data)
    assert AuditTrail(tmp_path / "audit", SECRET).verify().ok


def test_removed_reordered_or_rekeyed_records_are_detected(tmp_path: Path) -> None:
    trail = _small_trail(tmp_path / "audit")
    (path,) = trail.files()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], lines[2], lines[3]]))
    assert "seq 2 " in (trail.verify().problem or "")
    path.write_bytes(b"".join([lines[0], lines[2], lines[1], lines[3]]))
    assert "seq 2 " in (trail.verify().problem or "")
    path.write_bytes(b"".join(lines))
    other = AuditTrail(tmp_path / "audit", bytes(32)).verify()  # another secret
    assert not other.ok and "MAC does not verify" in (other.problem or "")
    assert trail.verify().ok


def test_a_line_cut_short_by_a_crash_is_dropped_and_recorded(tmp_path: Path) -> None:
    trail = _small_trail(tmp_path / "audit")
    (path,) = trail.files()
    whole = path.read_bytes()
    cut = b'{"event":"forwarded","fields":{"partn'
    with open(path, "ab") as f:
        f.write(cut)  # a SIGKILL inside write()
    verdict = AuditTrail(tmp_path / "audit", SECRET).verify()
    assert not verdict.ok and "incomplete last record" in (verdict.problem or "")
    fresh = AuditTrail(tmp_path / "audit", SECRET)  # a restarted process
    fresh.append("gateway_started", {"pid": 2})
    records = list(fresh.records())
    assert [r.event for r in records][-2:] == ["audit_recovered", "gateway_started"]
    assert records[-2].fields == {"dropped_bytes": len(cut), "after_seq": 4}
    assert fresh.verify().ok and fresh.verify().count == 6
    assert path.read_bytes().startswith(whole)


def test_an_altered_last_record_stops_appends(tmp_path: Path) -> None:
    trail = _small_trail(tmp_path / "audit")
    (path,) = trail.files()
    path.write_bytes(path.read_bytes().replace(b'"pid":1}', b'"pid":7}'))
    with pytest.raises(AuditError, match="last record does not verify"):
        AuditTrail(tmp_path / "audit", SECRET).append("gateway_started", {})


def _append_many(directory: str, n: int) -> None:
    trail = AuditTrail(Path(directory), SECRET)
    for i in range(n):
        trail.append("retry", {"attempts": i, "pid": os.getpid()})


def test_processes_appending_at_once_make_one_linear_chain(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path / "audit"), 40))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    verdict = AuditTrail(tmp_path / "audit", SECRET).verify()
    assert verdict.ok and verdict.count == 120 and verdict.last and verdict.last.seq == 120


def test_the_chain_runs_on_across_day_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from dicom_gateway.audit import trail as trail_module

    days = iter([datetime(2026, 3, 1, 23, 59, tzinfo=UTC), datetime(2026, 3, 2, 0, 1, tzinfo=UTC)])
    monkeypatch.setattr(trail_module, "_now", lambda: next(days))
    trail = AuditTrail(tmp_path / "audit", SECRET)
    trail.append("gateway_started", {})
    trail.append("gateway_stopped", {})
    assert [p.name for p in trail.files()] == ["audit-2026-03-01.jsonl", "audit-2026-03-02.jsonl"]
    assert trail.verify().ok and trail.verify().count == 2
    trail.files()[0].unlink()  # retention: the oldest day removed
    verdict = AuditTrail(tmp_path / "audit", SECRET).verify()
    assert verdict.ok and verdict.first and verdict.first.seq == 2


# -- configuration ------------------------------------------------------------------------------
def test_the_audit_section(tmp_path: Path) -> None:
    raw = base_config(tmp_path / "spool", [], [])
    audit = parse_config(raw, "gw.yaml").audit
    assert audit is not None and audit.dir == tmp_path / "spool" / "audit"
    raw["audit"] = {"enabled": False}
    assert parse_config(raw, "gw.yaml").audit is None
    (tmp_path / "short.key").write_text("abcd\n")
    (tmp_path / "short.key").chmod(0o600)
    raw["audit"] = {"dir": "trail", "secret": "short.key"}
    with pytest.raises(ConfigError, match=r"^gw.yaml: audit.secret: .*shorter than 16 bytes"):
        parse_config(raw, "gw.yaml", tmp_path)
    (tmp_path / "ok.key").write_text(SECRET.hex() + "\n")
    (tmp_path / "ok.key").chmod(0o600)
    raw["audit"]["secret"] = "ok.key"
    audit = parse_config(raw, "gw.yaml", tmp_path).audit
    assert audit is not None and audit.dir == tmp_path / "trail"  # relative to the file
    assert audit.secret == str(tmp_path / "ok.key")


def test_key_creation_and_purge_are_recorded_with_the_user(tmp_path: Path) -> None:
    config = _write_config(base_config(tmp_path / "spool", [], []), tmp_path / "gw.yaml")
    done = _cli("keys", "partner", "--name", "acme", "--out", str(tmp_path / "k"),
                "--config", config)
    assert done.returncode == 0, done.stderr
    assert _cli("spool", "purge", "--config", config).returncode == 0
    ops = [e["fields"] for e in _events(tmp_path / "spool") if e["event"] == "operator"]
    assert [o["action"] for o in ops] == ["keys partner", "spool purge"]
    assert ops[0]["name"] == "acme" and len(ops[0]["key_id"]) == 16 and ops[0]["user"]
    assert ops[1]["count"] == 0 and ops[1]["state"] == "failed"
    assert _cli("audit", "verify", "--config", config).returncode == 0


# -- acceptance (e): two partners, a failed delivery, the queries --------------------------------
def _write_config(raw: dict[str, Any], path: Path) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _trail_text(spool: Path) -> str:
    return "".join(p.read_text() for p in sorted((spool / "audit").glob("*.jsonl")))


def _events(spool: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _trail_text(spool).splitlines()]


def test_two_partners_and_a_failed_delivery(tmp_path: Path) -> None:
    down = free_port()  # nothing listens there
    study_a = [sample(**PATIENT), sample(**PATIENT)]
    for ds in study_a[1:]:
        ds.StudyInstanceUID = study_a[0].StudyInstanceUID
    study_b = sample(**PATIENT)
    with RecordingSCP() as scp:
        raw = base_config(tmp_path / "spool", [
            partner("alpha", scp.port), partner("beta", down, retry={"max_attempts": 2})],
            [{"name": "both", "match": {}, "to": ["alpha", "beta"], "profile": "passthrough"}])
        started = datetime.now(UTC)
        with running_gateway(raw) as gw:
            port = gw.receiver.port or 0
            assert send(port, [*study_a, study_b]) == [0, 0, 0]
            assert scp.wait_for_count(3, timeout=30) == 3
            deadline = time.monotonic() + 30
            while len(list((tmp_path / "spool" / "failed" / "beta").glob("*.dcm"))) < 3:
                assert time.monotonic() < deadline, "beta's deliveries never failed"
                time.sleep(0.1)
    config = _write_config(raw, tmp_path / "gw.yaml")
    done = _cli("audit", "verify", "--config", config)
    assert done.returncode == 0 and "audit trail OK" in done.stdout, done.stdout + done.stderr
    events = [e["event"] for e in _events(tmp_path / "spool")]
    assert events[0] == "gateway_started" and events[-1] == "gateway_stopped"
    assert events.count("received") == 3 and events.count("forwarded") == 3
    assert events.count("prepared") == 6 and events.count("failed") == 3
    assert "retry" in events and "association_accepted" in events

    sent = _cli("audit", "sent", "--config", config, "--partner", "alpha",
                "--since", started.isoformat(), "--until", datetime.now(UTC).isoformat())
    assert sent.returncode == 0, sent.stderr
    assert "2 studies, 3 instance(s)" in sent.stdout
    assert "2 instance(s), forwarded" in sent.stdout and "profile passthrough" in sent.stdout
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert "0 studies, 0 instance(s)" in _cli("audit", "sent", "--config", config, "--partner",
                                              "alpha", "--since", later).stdout
    assert "0 studies" in _cli("audit", "sent", "--config", config, "--partner", "beta").stdout

    where = _cli("audit", "study", "--config", config, str(study_a[0].StudyInstanceUID))
    assert where.returncode == 0, where.stderr
    lines = where.stdout.splitlines()
    assert "received: 2 instance(s) from HOSPITAL_PACS" in where.stdout
    alpha = next(line for line in lines if line.strip().startswith("alpha:"))
    beta = next(line for line in lines if line.strip().startswith("beta:"))
    assert "2 instance(s) forwarded" in alpha and "original" in alpha
    assert "0 instance(s) forwarded" in beta and re.search(r"failed 2 \w+", beta), beta

    # an operator's retry is recorded, and the chain still verifies
    assert _cli("spool", "retry", "--config", config, "--partner", "beta").returncode == 0
    op = [e for e in _events(tmp_path / "spool") if e["event"] == "operator"]
    assert op and op[-1]["fields"]["action"] == "spool retry" and op[-1]["fields"]["count"] == 3
    assert _cli("audit", "verify", "--config", config).returncode == 0

    # no identifier in the trail: neither the patient's nor an original UID
    text = _trail_text(tmp_path / "spool")
    for ds in [*study_a, study_b]:
        for value in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert str(value) not in text
    for value in PATIENT.values():
        assert value not in text

    # a flipped byte in the middle of the file: detected, named by its record
    (path,) = sorted((tmp_path / "spool" / "audit").glob("*.jsonl"))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    seq = data[:middle].count(b"\n") + 1
    data[middle] ^= 0x20
    path.write_bytes(bytes(data))
    broken = _cli("audit", "verify", "--config", config)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout
    assert f"seq {seq} " in broken.stdout, broken.stdout


def test_a_store_the_trail_cannot_record_is_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with RecordingSCP() as scp:
        raw = base_config(tmp_path / "spool", [partner("alpha", scp.port)],
                          [{"name": "all", "match": {}, "to": ["alpha"],
                            "profile": "passthrough"}])
        with running_gateway(raw) as gw:
            assert gw.audit is not None
            real = gw.audit.append

            def failing(event: str, fields: Any = None) -> Any:
                assert gw.audit is not None
                gw.audit.healthy = False  # as the real append does on an OSError
                raise AuditError("disk full (test)")

            monkeypatch.setattr(gw.audit, "append", failing)
            ds = sample()
            assert send(gw.receiver.port or 0, [ds]) == [0xA700]
            assert not list((tmp_path / "spool" / "inbox").rglob(f"{ds.SOPInstanceUID}*"))
            assert gw.ready() == (False, "audit trail not writable (instances are refused "
                                         "with 0xA700)")
            monkeypatch.setattr(gw.audit, "append", real)
            deadline = time.monotonic() + 20  # the supervisor tries again every 5 s
            while not gw.ready()[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gw.ready() == (True, "ok")
            assert send(gw.receiver.port or 0, [ds]) == [0]  # the re-send is taken
            assert scp.wait_for_count(1, timeout=30) == 1
        events = [r.event for r in gw.audit.spec.open().records()]
        assert events.index("audit_resumed") < events.index("received")


# -- acceptance (f): trace ----------------------------------------------------------------------
def test_trace_names_the_partner_also_without_the_private_block(tmp_path: Path) -> None:
    from importlib.resources import files

    pytest.importorskip("torch")
    surrogate = str(files("dicom_gateway").joinpath("defaults", "pneumonia-cnn-small.pt"))
    ct, mr = sample("CT_small.dcm", **PATIENT), sample("MR_small.dcm", **PATIENT)
    protect = {"method": "adversarial_perturbation", "surrogates": [surrogate], "steps": 1}
    with RecordingSCP(store_dir=tmp_path / "alpha") as a, \
            RecordingSCP(store_dir=tmp_path / "beta") as b:
        raw = base_config(tmp_path / "spool", [partner("alpha", a.port), partner("beta", b.port)],
                          [{"name": "ct-a", "match": {"modality": "CT"}, "to": ["alpha"],
                            "profile": "protect"},
                           {"name": "ct-b", "match": {"modality": "CT"}, "to": ["beta"],
                            "profile": "protect-deid"},
                           {"name": "mr", "match": {"modality": "MR"}, "to": ["alpha"],
                            "profile": "passthrough"}])
        raw["profiles"]["protect"] = protect
        raw["profiles"]["protect-deid"] = {**protect, "deidentify": {}}
        with_seal(raw, tmp_path / "keys")
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [ct, mr]) == [0, 0]
            assert a.wait_for_count(2, timeout=120) == 2
            assert b.wait_for_count(1, timeout=120) == 1
    config = _write_config(raw, tmp_path / "gw.yaml")
    got_a = {pydicom.dcmread(p).Modality: p for p in (tmp_path / "alpha").glob("*.dcm")}
    (got_b,) = (tmp_path / "beta").glob("*.dcm")
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for name, path in (("alpha", got_a["CT"]), ("beta", got_b)):
        ds = pydicom.dcmread(path)
        ds.remove_private_tags()
        ds.save_as(stripped / f"{name}.dcm")

    done = _cli("trace", "--config", config, str(got_a["CT"]), str(got_b))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert "partner alpha; by the seal's manifest (signature valid)" in out[0]
    assert "profile protect," in out[0] and "forwarded 20" in out[0]
    assert "partner beta; by the seal's manifest (signature valid)" in out[1]
    assert "profile protect-deid" in out[1]

    done = _cli("trace", "--config", config, str(stripped / "alpha.dcm"),
                str(stripped / "beta.dcm"))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert "partner alpha; by its derived SOP Instance UID in the audit trail" in out[0]
    assert "partner beta; by its derived SOP Instance UID in the audit trail" in out[1]
    assert "method adversarial_perturbation" in out[1] and "forwarded 20" in out[1]

    done = _cli("trace", "--config", config, str(got_a["MR"]))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "unknown: nothing in this file identifies a partner" in done.stdout
    assert "sent unchanged to: alpha" in done.stdout

    events = _events(tmp_path / "spool")
    kinds = {e["event"] for e in events}
    assert {"protected", "sealed", "deidentified", "prepared", "forwarded"} <= kinds
    deid = next(e for e in events if e["event"] == "deidentified")
    assert deid["fields"]["partner"] == "beta" and deid["fields"]["pseudonym"].startswith("ANON")
    text = _trail_text(tmp_path / "spool")
    for ds in (ct, mr):
        for value in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                      *PATIENT.values()):
            assert str(value) not in text

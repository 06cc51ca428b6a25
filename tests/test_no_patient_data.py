"""No patient data in logs or metrics, even at DEBUG (decision 0011), and none in the audit
trail: neither patient data nor an original UID (decision 0020)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from gwutil import GatewayProcess, base_config, partner, sample, send, wait_metric, with_seal
from peers import RecordingSCP

SECRETS = ("SECRET^PATIENT", "PID-SECRET-42", "19010203", "ACC-SECRET-7")


def assert_clean_audit_trail(spool: Path, datasets: list[Any]) -> None:
    """The audit trail under ``spool`` exists and holds no secret and no original UID."""
    text = "".join(p.read_text() for p in sorted((spool / "audit").glob("*.jsonl")))
    assert '"event":"received"' in text and '"event":"forwarded"' in text
    for value in (*SECRETS, *_uids(datasets)):
        assert value not in text


def _uids(datasets: list[Any]) -> list[str]:
    return [str(getattr(ds, k)) for ds in datasets
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]


def _log_references(config: Path, uids: list[str]) -> dict[str, str]:
    """``dicom-gateway audit ref``: the reference under which log lines name each UID."""
    run = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "audit", "ref",
                          "--config", str(config), *uids], capture_output=True, text=True,
                         check=True)
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    return {uid: lines[uid].split()[1].rstrip(",") for uid in uids}


def test_logs_and_metrics_carry_no_patient_data(tmp_path: Path,
                                                recording_scp: RecordingSCP) -> None:
    """At DEBUG, on a pass-through route and on a de-identifying one (with a quarantine): no
    identifier at any level, no original UID in any line (decision 0011): UIDs appear as the
    keyed references that ``audit ref`` computes."""
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port),
                                           partner("research", recording_scp.port)],
                      [{"name": "zz", "match": {"modality": "ZZ"}, "to": ["research"],
                        "profile": "deid"},
                       {"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}])
    raw["profiles"]["deid"] = {"method": "none", "deidentify": {}}
    with_seal(raw, tmp_path / "keys")
    raw["log_level"] = "DEBUG"
    with GatewayProcess(raw, tmp_path) as gw:
        ds = sample(PatientName=SECRETS[0], PatientID=SECRETS[1], PatientBirthDate=SECRETS[2],
                    AccessionNumber=SECRETS[3])
        other = sample(PatientName=SECRETS[0], PatientID=SECRETS[1], Modality="ZZ")
        burned = sample(PatientName=SECRETS[0], Modality="ZZ", BurnedInAnnotation="YES")
        assert send(gw.port, [ds]) == [0]
        assert send(gw.port, [other, burned], calling="MODALITY") == [0, 0]
        # both routes match the ZZ instances (no `stop`): ds to recorder, other to research and
        # recorder, burned to recorder (quarantined for research) share the one SCP
        assert recording_scp.wait_for_count(4, timeout=30) == 4
        wait_metric(gw.metrics_port, "dicom_gateway_quarantined_instances_total", 1)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics").read()
    log = gw.log_path.read_text()
    assert "stored sop=" in log and "forwarded" in log  # the log is not simply empty
    assert "quarantined sop=" in log and "deid_burned_in" in log
    for secret in SECRETS:
        assert secret not in log
        assert secret.encode() not in metrics
    uids = _uids([ds, other, burned])
    for uid in uids:
        assert uid not in log
    references = _log_references(gw.config_path, uids)
    assert f"stored sop={references[ds.SOPInstanceUID]} study={references[ds.StudyInstanceUID]}" \
        in log
    assert f"quarantined sop={references[burned.SOPInstanceUID]}" in log
    assert_clean_audit_trail(tmp_path / "spool", [ds, other, burned])


def test_tls_errors_carry_no_patient_data(tmp_path: Path) -> None:
    """A refused handshake, an accepted TLS sender and a partner whose certificate is refused,
    at DEBUG: the TLS error lines carry addresses, AE titles and reasons only."""
    import ssl

    from peers_tls import TestCA

    ca, foreign = TestCA(tmp_path / "pki", "hospital"), TestCA(tmp_path / "pki", "foreign")
    gateway, pacs, impostor = ca.issue("gateway"), ca.issue("pacs"), foreign.issue("impostor")
    partner_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    partner_ctx.load_cert_chain(str(impostor.cert), str(impostor.key))
    with RecordingSCP(ssl_context=partner_ctx) as scp:
        own = {"certificate": str(gateway.cert), "private_key": str(gateway.key)}
        raw = base_config(tmp_path / "spool", [partner("recorder", scp.port, tls={
            **own, "ca": str(ca.cert)})], [{"name": "all", "match": {}, "to": ["recorder"],
                                             "profile": "passthrough"}])
        raw["gateway"]["listen"]["tls"] = {**own, "client_ca": str(ca.cert)}
        raw["log_level"] = "DEBUG"
        with GatewayProcess(raw, tmp_path) as gw:
            sender = ssl.create_default_context(cafile=str(ca.cert))
            with pytest.raises(ConnectionRefusedError):  # no client certificate: refused
                send(gw.port, [sample(PatientName=SECRETS[0])], tls_args=(sender, "127.0.0.1"))
            sender.load_cert_chain(str(pacs.cert), str(pacs.key))
            ds = sample(PatientName=SECRETS[0], PatientID=SECRETS[1],
                        PatientBirthDate=SECRETS[2], AccessionNumber=SECRETS[3])
            assert send(gw.port, [ds], tls_args=(sender, "127.0.0.1")) == [0]
            deadline = time.monotonic() + 20
            while "tls_certificate" not in gw.log_path.read_text() and (
                    time.monotonic() < deadline):
                time.sleep(0.1)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics").read()
    log = gw.log_path.read_text()
    assert "TLS handshake refused from 127.0.0.1:" in log and "tls_certificate" in log
    for secret in SECRETS:
        assert secret not in log
        assert secret.encode() not in metrics
    for uid in _uids([ds]):
        assert uid not in log
    text = "".join(p.read_text() for p in (tmp_path / "spool" / "audit").glob("*.jsonl"))
    assert '"reason":"no_certificate"' in text and '"tls":true' in text
    for value in (*SECRETS, ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert value not in text


def test_a_log_reference_is_the_prefix_of_the_trails_name(tmp_path: Path) -> None:
    """The same keyed hash names a UID in the logs and in the audit trail, over-long UIDs too;
    standard UIDs, addresses and versions are left alone."""
    from dicom_gateway.audit import AuditTrail
    from dicom_gateway.logsafe import LogScrub

    trail = AuditTrail(tmp_path / "audit", b"s" * 32)
    mask = LogScrub(trail.keys.ids)
    for uid in ("1.2.826.0.1.3680043.8.498.12345678901", "2.25." + "9" * 70, "1." + "2" * 99):
        assert mask.mask(f"sop={uid}.") == f"sop=uid#{trail.identifier(uid)[:16]}."
    kept = "127.0.0.1:104 1.2.840.10008.1.2.1 pynetdicom 2.1.1 0.25 s 12.5 ms 0.857142857"
    assert mask.mask(kept) == kept
    assert mask.mask("/spool/inbox/2.25.1234567890/2.25.1234567891.dcm").count("uid#") == 2


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the hostile values
def test_a_uid_with_control_characters_cannot_forge_a_log_line(
        tmp_path: Path, recording_scp: RecordingSCP) -> None:
    """A sender's Study and Series UIDs carrying CR, LF, NUL and a fake log record, and a 20 kB
    Study UID (pynetdicom itself refuses such a SOP Instance UID): every line of
    the log is a record of its own (timestamp first) or an indented traceback line, none is the
    forged record, none holds a NUL, none is longer than the bound."""
    from pydicom.config import settings

    from dicom_gateway.logsafe import MAX_MESSAGE

    forged = "2026-01-01 00:00:00,000 INFO dicom_gateway.delivery: forwarded FORGED to x (success)"
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)],
                      [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}])
    raw["log_level"] = "DEBUG"
    old = settings.writing_validation_mode
    settings.writing_validation_mode = 0  # write the hostile values as a hostile sender would
    try:
        with GatewayProcess(raw, tmp_path) as gw:
            hostile = sample(StudyInstanceUID=f"1.2.3.4.5.6.7\r\n{forged}\x00",
                             SeriesInstanceUID=f"1.2.3.4.5.6.8\n{forged}\x00")
            long_uid = sample(StudyInstanceUID="1." + "2" * 20000)
            statuses = send(gw.port, [hostile, long_uid])
            assert recording_scp.wait_for_count(sum(s == 0 for s in statuses), timeout=30) >= 0
            time.sleep(1.0)
    finally:
        settings.writing_validation_mode = old
    text = gw.log_path.read_text(errors="replace")
    assert "\x00" not in text
    assert "FORGED" in text  # the hostile value was logged, escaped, inside another record
    for line in text.splitlines():
        assert line != forged and not line.startswith("2026-01-01")
        assert line[:1] == " " or line[:4].isdigit() or line.startswith("Traceback"), line
        assert len(line) <= MAX_MESSAGE + 200, len(line)

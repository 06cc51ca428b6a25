"""No patient data in logs or metrics, even at DEBUG (decision 0011), and none in the audit
trail: neither patient data nor an original UID (decision 0020)."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from gwutil import GatewayProcess, base_config, partner, sample, send
from peers import RecordingSCP

SECRETS = ("SECRET^PATIENT", "PID-SECRET-42", "19010203", "ACC-SECRET-7")


def assert_clean_audit_trail(spool: Path, datasets: list[object]) -> None:
    """The audit trail under ``spool`` exists and holds no secret and no original UID."""
    text = "".join(p.read_text() for p in sorted((spool / "audit").glob("*.jsonl")))
    assert '"event":"received"' in text and '"event":"forwarded"' in text
    uids = [str(getattr(ds, k)) for ds in datasets
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    for value in (*SECRETS, *uids):
        assert value not in text


def test_logs_and_metrics_carry_no_patient_data(tmp_path: Path,
                                                recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)],
                      [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}])
    raw["log_level"] = "DEBUG"
    with GatewayProcess(raw, tmp_path) as gw:
        ds = sample(PatientName=SECRETS[0], PatientID=SECRETS[1], PatientBirthDate=SECRETS[2],
                    AccessionNumber=SECRETS[3])
        other = sample(PatientName=SECRETS[0], Modality="ZZ")
        assert send(gw.port, [ds]) == [0]
        assert send(gw.port, [other], calling="MODALITY") == [0]
        assert recording_scp.wait_for_count(2, timeout=30) == 2
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics").read()
    log = gw.log_path.read_text()
    assert "stored sop=" in log and "forwarded" in log  # the log is not simply empty
    for secret in SECRETS:
        assert secret not in log
        assert secret.encode() not in metrics
    assert_clean_audit_trail(tmp_path / "spool", [ds, other])


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
    text = "".join(p.read_text() for p in (tmp_path / "spool" / "audit").glob("*.jsonl"))
    assert '"reason":"no_certificate"' in text and '"tls":true' in text
    for value in (*SECRETS, ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert value not in text

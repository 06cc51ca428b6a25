"""No patient data in logs or metrics, even at DEBUG (decision 0011)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from gwutil import GatewayProcess, base_config, partner, sample, send
from peers import RecordingSCP

SECRETS = ("SECRET^PATIENT", "PID-SECRET-42", "19010203", "ACC-SECRET-7")


def test_logs_and_metrics_carry_no_patient_data(tmp_path: Path,
                                                recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)],
                      [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}])
    raw["log_level"] = "DEBUG"
    with GatewayProcess(raw, tmp_path) as gw:
        ds = sample(PatientName=SECRETS[0], PatientID=SECRETS[1], PatientBirthDate=SECRETS[2],
                    AccessionNumber=SECRETS[3])
        assert send(gw.port, [ds]) == [0]
        assert send(gw.port, [sample(PatientName=SECRETS[0], Modality="ZZ")],
                    calling="MODALITY") == [0]
        assert recording_scp.wait_for_count(2, timeout=30) == 2
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics").read()
    log = gw.log_path.read_text()
    assert "stored sop=" in log and "forwarded" in log  # the log is not simply empty
    for secret in SECRETS:
        assert secret not in log
        assert secret.encode() not in metrics

"""The spool CLI (list, retry, purge) on a spool the gateway filled, and CLI error lines."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from gwutil import base_config, partner, running_gateway, sample, send, with_seal
from peers import RecordingSCP

from dicom_gateway.cli import main
from dicom_gateway.protect import Outcome, registry
from dicom_gateway.protect.method import failed
from dicom_gateway.protect.options import NoneOptions


def test_list_retry_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scp = RecordingSCP()  # down while the entries fail
    raw = base_config(tmp_path / "spool", [partner("recorder", scp.port, associations=1)],
                      [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}])
    raw["retry"] = {"initial_seconds": 0.05, "max_seconds": 0.1, "max_attempts": 2, "jitter": 0.0}
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    failed_dir = tmp_path / "spool" / "failed" / "recorder"
    instances = [sample() for _ in range(3)]
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, instances) == [0, 0, 0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(list(failed_dir.glob("*.dcm"))) < 3:
            time.sleep(0.1)
        capsys.readouterr()
        assert main(["spool", "list", "--config", str(cfg), "--state", "failed"]) == 0
        out = capsys.readouterr().out
        assert "3 entries" in out and "connection_failed" in out
        first = sorted(failed_dir.glob("*.dcm"))[0].name[:-4]
        assert main(["spool", "purge", "--config", str(cfg), first]) == 0
        assert "purged 1 entry" in capsys.readouterr().out
        scp.start()
        try:
            assert main(["spool", "retry", "--config", str(cfg), "--partner", "recorder"]) == 0
            assert "requeued 2 entries" in capsys.readouterr().out
            assert scp.wait_for_count(2, timeout=20) == 2  # the running gateway rescans
            # the partner counts an instance on receipt: stop it only once its answers came
            # back (the outbox is empty), or a lost answer is retried against a stopped partner
            outbox = tmp_path / "spool" / "outbox" / "recorder"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and list(outbox.glob("*.dcm")):
                time.sleep(0.05)
        finally:
            scp.stop()
    assert not list(failed_dir.glob("*.dcm"))


class _RefusingUntilFixed:
    """A protection method that refuses everything while the test's flag file exists."""

    name = "refusing"
    flag: Path

    def __init__(self, options: object) -> None:
        pass

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        if self.flag.exists():
            return [failed(p, "unsupported_pixels", "refused until the flag is removed")
                    for p in paths]
        return [Outcome(source=p, output=p) for p in paths]


def test_quarantine_retry_is_picked_up_by_the_running_gateway(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "refuse"
    flag.touch()
    monkeypatch.setattr(_RefusingUntilFixed, "flag", flag, raising=False)
    monkeypatch.setitem(registry._METHODS, "refusing", (_RefusingUntilFixed, NoneOptions))
    scp = RecordingSCP()
    scp.start()
    try:
        raw = base_config(tmp_path / "spool", [partner("recorder", scp.port)],
                          [{"name": "all", "match": {}, "to": ["recorder"], "profile": "r"}])
        raw["profiles"]["r"] = {"method": "refusing"}
        raw["gateway"]["rescan_seconds"] = 0.2
        with_seal(raw, tmp_path / "keys")
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        quarantine = tmp_path / "spool" / "quarantine" / "recorder"
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [sample(), sample()]) == [0, 0]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(list(quarantine.glob("*.dcm"))) < 2:
                time.sleep(0.1)
            assert len(list(quarantine.glob("*.dcm"))) == 2 and scp.received_sops == set()
            flag.unlink()  # the operator fixes the cause, then requeues without a restart
            capsys.readouterr()
            assert main(["spool", "retry", "--config", str(cfg), "--state", "quarantine",
                         "--partner", "recorder"]) == 0
            assert "requeued 2 entries" in capsys.readouterr().out
            assert scp.wait_for_count(2, timeout=30) == 2
        assert not list(quarantine.glob("*.dcm"))
    finally:
        scp.stop()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = base_config(tmp_path / "spool", [], [])
    cfg = tmp_path / "gw.yaml"
    raw["gateway"]["listen"]["port"] = 1  # privileged/unusable for a test: may fail to bind
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["spool", "list", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_max_associations(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    raw = base_config(tmp_path / "spool", [], [], max_associations=1)
    with running_gateway(raw) as gw:
        ae = AE(ae_title="HOSPITAL_PACS")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", gw.receiver.port or 0, ae_title="EGRESS_GW")
        second = ae.associate("127.0.0.1", gw.receiver.port or 0, ae_title="EGRESS_GW")
        try:
            assert first.is_established
            assert second.is_rejected
        finally:
            first.release()

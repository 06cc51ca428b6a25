"""Acceptance (c): the gateway process is SIGKILLed at several moments while a 200-instance
study streams through; after each restart every instance the sender saw acknowledged reaches
the partner. Prints lost (must be 0) and duplicate deliveries.

Issue 13 acceptance (e), first part: after those SIGKILLs the audit trail's chain verifies
(``dicom-gateway audit verify``), every acknowledged instance has its ``received`` record and
every delivered one its ``forwarded`` record."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from gwutil import GatewayProcess, base_config, partner
from peers import RecordingSCP, copy_ct_series
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context

from dicom_gateway.reactor_guard import guard

N = 200


class Sender:
    """Streams files to the gateway in a thread, recording every Success it sees."""

    def __init__(self, port: int, files: list[Path]) -> None:
        self.port, self.files = port, files
        self.acked: set[str] = set()
        self.lock = threading.Lock()
        self.sop = {f: str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                    for f in files}
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pending = [f for f in self.files if self.sop[f] not in self.acked]
        ae = AE(ae_title="HOSPITAL_PACS")
        ae.dimse_timeout = 5
        assoc = guard(ae.associate("127.0.0.1", self.port, ae_title="EGRESS_GW", contexts=[
            build_context(pydicom.dcmread(self.files[0], stop_before_pixels=True).SOPClassUID,
                          ["1.2.840.10008.1.2.1"])]))
        if not assoc.is_established:
            return
        try:
            for f in pending:
                rsp = assoc.send_c_store(f)
                if rsp is None or getattr(rsp, "Status", None) != 0x0000:
                    return  # the gateway died mid-transfer: this one is not acknowledged
                with self.lock:
                    self.acked.add(self.sop[f])
        except Exception:
            return
        finally:
            if assoc.is_established:
                assoc.release()

    def wait(self, timeout: float = 120) -> None:
        assert self.thread is not None
        self.thread.join(timeout)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def _wait(pred, timeout: float = 120.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("release", ["study", "instance"])
def test_sigkill_at_many_moments_loses_nothing(tmp_path: Path, release: str) -> None:
    """Killed while receiving, assembling (``release: study``) or streaming (``release:
    instance``: forwarding runs while the sender still sends), right after a restart, and
    while forwarding: every acknowledged instance reaches the partner."""
    files = copy_ct_series(tmp_path / "study", n_instances=N, study_uid=generate_uid())
    scp = RecordingSCP(delay_seconds=0.01, hash_pixels=False).start()
    raw = base_config(tmp_path / "spool", [partner("recorder", scp.port, associations=2)],
                      [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}],
                      study_stable_seconds=2.0)
    raw["profiles"]["passthrough"]["release"] = release
    gw = GatewayProcess(raw, tmp_path)
    sender = Sender(gw.port, files)
    kills: list[str] = []

    def kill(moment: str) -> None:
        gw.kill()
        kills.append(f"{moment} (acked={sender.count()}, at partner={len(scp.received_sops)})")

    try:
        gw.start()
        sender.start()
        assert _wait(lambda: sender.count() >= 40)
        kill("mid-receive #1")
        sender.wait()
        gw.start()
        sender.start()
        assert _wait(lambda: sender.count() >= 120)
        kill("mid-receive #2")
        sender.wait()
        gw.start()
        sender.start()
        sender.wait()
        assert sender.count() == N
        if release == "study":
            assert list((tmp_path / "spool" / "inbox").rglob("*.dcm"))  # still assembling
            kill("mid-assembly (study not yet stable)")
        else:
            kill("after the last acknowledgement, mid-stream")
        gw.start()
        time.sleep(0.5)
        kill("right after restart, during the new quiet period")
        gw.start()
        assert _wait(lambda: len(scp.received_sops) >= 50)
        kill("mid-forward #1")
        gw.start()
        assert _wait(lambda: len(scp.received_sops) >= 150)
        kill("mid-forward #2")
        gw.start()
        assert _wait(lambda: len(scp.received_sops) >= N, timeout=180), gw.log_tail()
        _wait(lambda: not list((tmp_path / "spool" / "outbox").rglob("*.dcm")), timeout=30)
    finally:
        gw.stop()
        scp.stop()
    lost = sender.acked - scp.received_sops
    print(f"\nkills: {len(kills)}")
    for k in kills:
        print("  " + k)
    print(f"acknowledged={len(sender.acked)} delivered={len(scp.received_sops)} "
          f"lost={len(lost)} duplicates={scp.duplicates}")
    assert len(kills) >= 5
    assert not lost
    _check_audit_trail(gw, tmp_path / "spool", sender.acked, scp.received_sops)


def _check_audit_trail(gw: GatewayProcess, spool: Path, acked: set[str],
                       delivered: set[str]) -> None:
    from dicom_gateway.audit import AuditTrail
    from dicom_gateway.seal.keys import read_secret

    done = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "audit", "verify",
                           "--config", str(gw.config_path)], capture_output=True, text=True,
                          timeout=120)
    print(done.stdout.strip())
    assert done.returncode == 0 and "audit trail OK" in done.stdout, done.stdout + done.stderr
    trail = AuditTrail(spool / "audit", read_secret(spool / "audit" / "audit-secret.key"))
    records = list(trail.records())
    received = {r.fields["sop"] for r in records if r.event == "received"}
    forwarded = {r.fields["sop"] for r in records if r.event == "forwarded"}
    starts = sum(r.event == "gateway_started" for r in records)
    recovered = sum(r.event == "audit_recovered" for r in records)
    print(f"audit: {len(records)} records, {starts} starts, {recovered} cut-short lines dropped")
    assert starts >= 6
    assert {trail.identifier(sop) for sop in acked} <= received
    assert {trail.identifier(sop) for sop in delivered} <= forwarded

"""A partner that serves fewer associations at once than ``partners[].associations`` (a default
DCMTK storescp serves one and leaves the next request unanswered until the ACSE timeout aborts
it) gets everything without the partner being held, an entry charged or a retry delay: the
refused worker stands aside and its entry goes straight back to the queue."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gwutil import sample
from peers import DcmtkStoreSCP

from dicom_gateway.delivery import PartnerQueue
from dicom_gateway.metrics import ForwardMetrics
from dicom_gateway.settings import PartnerConfig, RetryConfig
from dicom_gateway.spool import Spool

N = 8


def test_a_partner_taking_one_association_at_a_time_gets_all_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool")
    outbox = spool.root / "outbox" / "p"
    outbox.mkdir(parents=True)
    for _ in range(N):  # queued before the workers start: both associate at once
        ds = sample()
        ds.save_as(outbox / f"{ds.StudyInstanceUID}_{ds.SOPInstanceUID}.dcm",
                   enforce_file_format=True)
    metrics = ForwardMetrics()
    with DcmtkStoreSCP(tmp_path / "received") as scp:  # no --fork: one association at a time
        # the defaults (30 s first retry) make the old behaviour's hold obvious; a short ACSE
        # timeout only shortens how long the refused request stays unanswered
        config = PartnerConfig("p", scp.ae_title, "127.0.0.1", scp.port, "GW", associations=2,
                               acse_timeout_seconds=2.0, retry=RetryConfig())
        queue = PartnerQueue(config, spool, metrics)
        queue.start()
        try:
            assert scp.wait_for_count(N, timeout=120) == N
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and spool.outbox_entries("p"):
                time.sleep(0.05)
        finally:
            queue.stop()

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(f"dicom_gateway_{name}",
                                                 {"partner": "p", **labels}) or 0.0

    assert not spool.outbox_entries("p") and not list(outbox.glob("*.state.json"))
    assert value("forwarded_instances_total", result="success") == N
    for reason in ("association_rejected", "association_aborted"):  # never held as down
        assert value("forward_retries_total", reason=reason) == 0
    assert value("forward_retries_total", reason="association_limit") == 1
    assert value("partner_up") == 1
    assert "using 1 of 2 association(s)" in caplog.text

"""Acceptance (f): /metrics parses with prometheus_client's parser (and promtool when present)
and its counters equal the counts the test produced; /healthz and /readyz answer."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from gwutil import base_config, metric, partner, running_gateway, sample, scrape, send, wait_metric
from peers import RecordingSCP

ROUTES = [{"name": "ct", "match": {"modality": "CT"}, "to": ["recorder"], "profile": "passthrough"}]


def test_counters_equal_what_happened(tmp_path: Path, recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ROUTES)
    cts = [sample("CT_small.dcm") for _ in range(5)]
    no_pixels = sample("CT_small.dcm")
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        ops = gw.endpoint.port  # type: ignore[union-attr]
        assert send(port, cts[:3]) == [0, 0, 0]
        assert send(port, cts[3:], calling="MODALITY") == [0, 0]
        assert send(port, [sample("MR_small.dcm")]) == [0x0124]
        with pytest.raises(ConnectionRefusedError):
            send(port, [sample()], calling="INTRUDER")
        assert recording_scp.wait_for_count(5, timeout=30) == 5
        wait_metric(ops, "dicom_gateway_forwarded_instances_total", 5, partner="recorder",
                    result="success")  # the partner records just before it answers
        deadline = time.monotonic() + 10  # forwarder metrics arrive every 0.25 s
        while metric(scrape(ops), "dicom_gateway_queue_depth", partner="recorder") and (
                time.monotonic() < deadline):
            time.sleep(0.05)
        # the five studies streamed (release: instance); each is released once more, empty,
        # when it has been quiet (0.5 s), which closes it
        while metric(scrape(ops), "dicom_gateway_open_studies") and time.monotonic() < deadline:
            time.sleep(0.05)
        text = urllib.request.urlopen(f"http://127.0.0.1:{ops}/metrics").read().decode()
        samples = scrape(ops)
        health = urllib.request.urlopen(f"http://127.0.0.1:{ops}/healthz").read()
        ready = urllib.request.urlopen(f"http://127.0.0.1:{ops}/readyz").read()
    del no_pixels
    assert health == b"ok\n" and ready == b"ok\n"
    m = lambda name, **labels: metric(samples, name, **labels)  # noqa: E731
    assert m("dicom_gateway_received_instances_total", calling_ae="HOSPITAL_PACS",
             status="stored") == 3
    assert m("dicom_gateway_received_instances_total", calling_ae="MODALITY", status="stored") == 2
    assert m("dicom_gateway_received_instances_total", calling_ae="HOSPITAL_PACS",
             status="no_route") == 1
    assert m("dicom_gateway_associations_total", result="accepted") == 3
    assert m("dicom_gateway_associations_total", result="rejected") == 1
    assert m("dicom_gateway_associations_active") == 0
    assert m("dicom_gateway_forwarded_instances_total", partner="recorder", result="success") == 5
    assert m("dicom_gateway_forward_attempts_total", partner="recorder") == 5
    assert m("dicom_gateway_queue_depth", partner="recorder") == 0
    assert m("dicom_gateway_open_studies") == 0
    assert m("dicom_gateway_studies_released_total") == 5
    assert m("dicom_gateway_streamed_instances_total") == 5
    received = m("dicom_gateway_received_bytes_total", calling_ae="HOSPITAL_PACS") + m(
        "dicom_gateway_received_bytes_total", calling_ae="MODALITY")
    assert received > 5 * 30_000
    assert received == m("dicom_gateway_forwarded_bytes_total", partner="recorder")
    assert m("dicom_gateway_receive_duration_seconds_count") == 6
    assert m("dicom_gateway_protect_duration_seconds_count", method="none") == 5
    assert m("dicom_gateway_protection_device", device="cpu") == 1
    assert m("dicom_gateway_build_info", version=__import__("dicom_gateway").__version__) == 1
    assert m("dicom_gateway_spool_free_bytes") > 0
    for line in text.splitlines():  # labels only from the fixed sets, never UIDs
        assert "1.2.826" not in line and "1.3.6.1" not in line
    promtool = shutil.which("promtool")
    if promtool:
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_protect_duration_is_observed_once_per_instance(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dicom_gateway.metrics import Metrics
    from dicom_gateway.protect import Outcome, registry
    from dicom_gateway.protect.options import NoneOptions
    from dicom_gateway.settings import ProfileConfig
    from dicom_gateway.stage import ProtectionStage

    def copy_method(options: object) -> object:
        return lambda paths: [Outcome(source=p, output=p) for p in paths]

    monkeypatch.setitem(registry._METHODS, "zz_copy", (copy_method, NoneOptions))
    metrics = Metrics()
    stage = ProtectionStage({"p": ProfileConfig("p", "zz_copy", False, "quarantine", {})},
                            metrics)
    batch = [tmp_path / f"{i}.dcm" for i in range(3)]  # one series batch of three instances
    assert len(stage.protect("p", batch)) == 3
    count = metrics.registry.get_sample_value("dicom_gateway_protect_duration_seconds_count",
                                              {"method": "zz_copy"})
    assert count == 3  # the metric reads per instance, as docs/metrics.md says


def test_readyz_says_not_ready_while_the_spool_is_full(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With the spool's file system all but full every C-STORE would get 0xA700: /readyz is
    503 with the reason, and 200 again once space is back (issue 15, item 9)."""
    import urllib.error

    raw = base_config(tmp_path / "spool", [partner("recorder", 104)], ROUTES)
    with running_gateway(raw) as gw:
        url = f"http://127.0.0.1:{gw.endpoint.port}/readyz"  # type: ignore[union-attr]
        monkeypatch.setattr(gw.spool, "free_bytes", lambda: 4096)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url)
        assert refused.value.code == 503
        assert b"spool full (4096 bytes free)" in refused.value.read()
        monkeypatch.undo()
        assert urllib.request.urlopen(url).read() == b"ok\n"

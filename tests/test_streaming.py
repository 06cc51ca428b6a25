"""Streaming release (decision 0028): an instance whose every destination's profile says
``release: instance`` is forwarded as soon as it is durable, without waiting for its study to be
quiet; ``release: study`` keeps the quiet period, also for instances of the same study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gwutil import base_config, metric, partner, running_gateway, sample, scrape, send
from peers import RecordingSCP
from pydicom.uid import generate_uid

from dicom_gateway.config import parse_config
from dicom_gateway.errors import ConfigError

NEVER_QUIET = 3600.0  # no study becomes quiet while a test runs


def _study(n: int, study: str, series: str) -> list[Any]:
    out = []
    for _ in range(n):
        ds = sample()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        out.append(ds)
    return out


def test_instances_leave_before_their_study_is_quiet(tmp_path: Path,
                                                     recording_scp: RecordingSCP) -> None:
    routes = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], routes,
                      study_stable_seconds=NEVER_QUIET)
    study, series = generate_uid(), generate_uid()
    with running_gateway(raw) as gw:
        first = _study(3, study, series)
        assert send(gw.receiver.port or 0, first) == [0, 0, 0]
        assert recording_scp.wait_for_count(3, timeout=30) == 3
        later = _study(2, study, series)  # the same study goes on streaming
        assert send(gw.receiver.port or 0, later) == [0, 0]
        assert recording_scp.wait_for_count(5, timeout=30) == 5
        assert recording_scp.received_sops == {str(d.SOPInstanceUID) for d in first + later}
        assert recording_scp.duplicates == 0
        samples = scrape(gw.endpoint.port if gw.endpoint else 0)
        assert metric(samples, "dicom_gateway_streamed_instances_total") == 5
        assert metric(samples, "dicom_gateway_studies_released_total") == 0  # never quiet


def test_a_study_profile_waits_for_quiet_even_in_a_streaming_study(
        tmp_path: Path, recording_scp: RecordingSCP) -> None:
    """One study, two series routed differently: the ``release: study`` series stays in the
    inbox while the other streams, and leaves once the study is quiet (here: after a restart
    with a short quiet period); nothing is sent twice."""
    other = RecordingSCP("OTHER").start()
    try:
        routes = [{"name": "stream", "match": {"calling_ae": "HOSPITAL_PACS"},
                   "to": ["recorder"], "profile": "passthrough"},
                  {"name": "whole", "match": {"calling_ae": "MODALITY"}, "to": ["other"],
                   "profile": "whole-study"}]
        spool = tmp_path / "spool"
        raw = base_config(spool, [partner("recorder", recording_scp.port),
                                  partner("other", other.port, ae_title="OTHER")], routes,
                          study_stable_seconds=NEVER_QUIET)
        raw["profiles"]["whole-study"] = {"method": "none", "release": "study"}
        study = generate_uid()
        held = _study(2, study, generate_uid())
        streamed = _study(3, study, generate_uid())
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, held, calling="MODALITY") == [0, 0]
            assert send(gw.receiver.port or 0, streamed) == [0, 0, 0]
            assert recording_scp.wait_for_count(3, timeout=30) == 3
            # every stream pass after the held instances arrived left them where they were
            inbox = list((spool / "inbox" / study).glob("*.dcm"))
            assert {p.name.split("~")[0] for p in inbox} == {str(d.SOPInstanceUID) for d in held}
            assert other.wait_for_count(1, timeout=0.5) == 0
        raw["gateway"]["study_stable_seconds"] = 0.5
        with running_gateway(raw):
            assert other.wait_for_count(2, timeout=30) == 2
        assert other.received_sops == {str(d.SOPInstanceUID) for d in held}
        assert recording_scp.wait_for_count(3, timeout=1) == 3  # none of them again
        assert recording_scp.duplicates == 0
        assert not (spool / "inbox" / study).exists()  # the quiet release tidied up
    finally:
        other.stop()


def test_release_is_read_with_its_default_and_checked() -> None:
    routes = [{"name": "all", "match": {}, "to": ["p"], "profile": "passthrough"}]
    raw = base_config(Path("/nonexistent/spool"), [partner("p", 11112)], routes)
    raw["profiles"]["whole-study"] = {"method": "none", "release": "study"}
    config = parse_config(raw, "site.yaml")
    assert config.profiles["passthrough"].release == "instance"
    assert config.profiles["whole-study"].release == "study"
    raw["profiles"]["bad"] = {"method": "none", "release": "later"}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "site.yaml")
    assert info.value.path == "profiles.bad.release"
    assert "'instance' or 'study'" in info.value.problem


def test_a_series_method_cannot_release_per_instance(tmp_path: Path) -> None:
    """``unlearnable`` crafts one release over the series: it always waits for the study."""
    pytest.importorskip("torch")
    from dicom_gateway.protect import instance_scoped

    assert not instance_scoped("unlearnable")
    assert instance_scoped("adversarial_perturbation") and instance_scoped("none")
    surrogate = Path(__file__).resolve().parents[1] / "dicom_gateway" / "defaults" / \
        "pneumonia-cnn-small.pt"
    routes = [{"name": "all", "match": {}, "to": ["p"], "profile": "passthrough"}]
    raw = base_config(tmp_path / "spool", [partner("p", 11112)], routes)
    raw["profiles"]["release-noise"] = {
        "method": "unlearnable", "surrogates": [str(surrogate)], "label_tag": "PatientSex",
        "classes": ["F", "M"], "release": "instance"}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "site.yaml")
    assert info.value.path == "profiles.release-noise.release"
    assert "whole series" in info.value.problem
    raw["profiles"]["release-noise"].pop("release")
    assert parse_config(raw, "site.yaml").profiles["release-noise"].release == "study"


def test_background_work_yields_the_cpu_to_receiving(tmp_path: Path,
                                                     recording_scp: RecordingSCP) -> None:
    """The forwarder processes and the assembler thread run at nice +10 (decision 0028);
    the receiving threads keep the gateway's own priority."""
    import os
    import threading

    from dicom_gateway.priority import BACKGROUND_NICE, run_in_background

    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    def background() -> None:
        run_in_background()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen == [min(19, base + BACKGROUND_NICE)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # only that one
    routes = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], routes)
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, [sample()]) == [0]
        assert recording_scp.wait_for_count(1, timeout=30) == 1
        proc = gw.forwarders["recorder"]._proc
        assert proc is not None and proc.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, base + BACKGROUND_NICE)
        assert gw.assembler._thread is not None and gw.assembler._thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, gw.assembler._thread.native_id) == min(
            19, base + BACKGROUND_NICE)

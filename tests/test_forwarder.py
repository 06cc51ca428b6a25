"""Forwarder processes: a killed forwarder is restarted and delivery resumes; a killed gateway
takes its forwarders with it (no orphan keeps sending)."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

from gwutil import GatewayProcess, base_config, partner, running_gateway, sample, send
from peers import RecordingSCP

ALL = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[1] == str(pid) and stat[0] != "Z":
                out.append(int(entry))
    return out


def test_dead_forwarder_is_restarted(tmp_path: Path, recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ALL)
    with running_gateway(raw) as gw:
        forwarder = gw.forwarders["recorder"]
        os.kill(forwarder._proc.pid, signal.SIGKILL)
        ds = sample()
        assert send(gw.receiver.port or 0, [ds]) == [0]  # receiving is not affected
        assert recording_scp.wait_for_count(1, timeout=30) == 1  # delivered by the new one
        assert forwarder.restarts == 1
        assert gw.healthy() == (True, "ok")


def test_an_idle_association_is_released(tmp_path: Path, recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port,
                                                   idle_release_seconds=0.5,
                                                   dimse_timeout_seconds=120)], ALL)
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, [sample()]) == [0]
        assert recording_scp.wait_for_count(1, timeout=30) == 1
        # nothing else is sent, and the network timeout (120 s) is far: the idle check ends it
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and recording_scp.open_associations:
            time.sleep(0.05)
        assert recording_scp.open_associations == 0


def test_forwarders_die_with_a_killed_gateway(tmp_path: Path) -> None:
    raw = base_config(tmp_path / "spool", [partner("a", 1), partner("b", 2)], ALL[:0])
    gw = GatewayProcess(raw, tmp_path).start()
    assert gw.proc is not None
    children = _children(gw.proc.pid)
    assert len(children) >= 2  # one forwarder per partner
    body = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/healthz").read()
    assert body == b"ok\n"
    gw.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.05)
    assert not [c for c in children if Path(f"/proc/{c}").exists()
                and "Z" not in Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0]]

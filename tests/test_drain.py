"""Graceful drain (SIGTERM, ``gateway.drain_seconds``): readiness goes false, the listener
closes, what is queued is delivered when the partner is there and kept in the spool when it is
not; ``serve`` drains on SIGTERM and exits 0."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from gwutil import GatewayProcess, base_config, partner, running_gateway, sample, send
from peers import RecordingSCP, free_port

ALL = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]


def _readyz(port: int) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_drain_delivers_what_is_queued_and_says_not_ready(tmp_path: Path,
                                                          recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ALL)
    cts = [sample() for _ in range(4)]
    with running_gateway(raw) as gw:
        ops = gw.endpoint.port if gw.endpoint else 0
        assert send(gw.receiver.port or 0, cts) == [0, 0, 0, 0]
        left = gw.drain(30.0)
        assert left == {"associations": 0, "inbox": 0, "outbox": 0}
        assert _readyz(ops) == (503, b"draining\n")
        assert not gw.receiver.listening
    assert recording_scp.received_sops == {str(d.SOPInstanceUID) for d in cts}


def test_drain_keeps_what_cannot_be_delivered_in_the_spool(tmp_path: Path) -> None:
    down = free_port()  # nothing listens there
    raw = base_config(tmp_path / "spool", [partner("recorder", down)], ALL)
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, [sample(), sample()]) == [0, 0]
        left = gw.drain(1.0)  # bounded: the partner does not come back meanwhile
        assert left["outbox"] + left["inbox"] == 2
    kept = list((tmp_path / "spool").glob("*/*/*.dcm"))
    assert len(kept) == 2  # for this gateway's next start


def test_sigterm_drains_then_exits_zero(tmp_path: Path, recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ALL,
                      drain_seconds=30)
    gw = GatewayProcess(raw, tmp_path).start()
    assert gw.proc is not None
    cts = [sample() for _ in range(3)]
    assert send(gw.port, cts) == [0, 0, 0]
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=60) == 0
    assert recording_scp.received_sops == {str(d.SOPInstanceUID) for d in cts}
    assert not list((tmp_path / "spool").glob("*/*/*.dcm"))  # nothing left behind
    log = gw.log_tail(20000)
    assert "draining" in log and "drained" in log
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "stopped" not in gw.log_tail(20000):
        time.sleep(0.1)
    assert "stopped" in gw.log_tail(20000)

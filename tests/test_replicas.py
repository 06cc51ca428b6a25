"""Several replicas, share-nothing, behind a real TCP load balancer (HAProxy, from Debian).

Three gateways, each with its own spool, share only their keys (the seal's UID secret), so a
study whose instances land on two replicas reaches the partner with one derived Study UID.
HAProxy spreads associations round-robin and takes a replica out when its ``/readyz`` fails.
Mid-traffic one replica is sent SIGTERM (it drains and exits) and another SIGKILL (it is
started again afterwards on its own spool, as a StatefulSet would); the sender re-sends what
was not acknowledged, as a PACS does. Every acknowledged instance must reach the partner.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest
from gwutil import GatewayProcess, base_config, partner, sample, uid_secret, with_seal
from peers import RecordingSCP, free_port
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context

from dicom_gateway.reactor_guard import guard
from dicom_gateway.seal.uids import derive_uid

HAPROXY = shutil.which("haproxy")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (apt-get install "
                                 "haproxy; scripts/setup.sh --test installs it)")]

STUDIES, PER_STUDY, PER_ASSOCIATION, SENDERS = 20, 6, 2, 3
ROUTES = [{"name": "all", "match": {}, "to": ["partner"], "profile": "research"}]


def _haproxy_config(port: int, replicas: list[GatewayProcess]) -> str:
    servers = "\n".join(
        f"  server r{i} 127.0.0.1:{g.port} check port {g.metrics_port}"
        for i, g in enumerate(replicas))
    return f"""global
  maxconn 256
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch
frontend dicom
  bind 127.0.0.1:{port}
  default_backend gateways
backend gateways
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 200ms fall 1 rise 2
{servers}
"""


def _associate(port: int, datasets: list[Any]) -> list[int]:
    """C-STORE ``datasets`` on one association; a status per instance, -1 when none came."""
    ae = AE(ae_title="HOSPITAL_PACS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    contexts = [build_context(str(datasets[0].SOPClassUID),
                              [str(datasets[0].file_meta.TransferSyntaxUID)])]
    assoc = guard(ae.associate("127.0.0.1", port, ae_title="EGRESS_GW", contexts=contexts))
    if not assoc.is_established:
        return [-1] * len(datasets)
    statuses = []
    try:
        for ds in datasets:
            try:
                rsp = assoc.send_c_store(ds)
            except Exception:
                rsp = None
            statuses.append(int(getattr(rsp, "Status", -1)) if rsp else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def _ready(port: int, replicas: list[GatewayProcess], timeout: float = 30) -> None:
    """Until an association through the balancer works (HAProxy has seen a replica up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ae = AE(ae_title="HOSPITAL_PACS")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="EGRESS_GW")
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.2)
    raise AssertionError("no replica reachable through HAProxy: "
                         + " | ".join(g.log_tail(500) for g in replicas))


def test_three_replicas_behind_haproxy_lose_nothing(tmp_path: Path) -> None:
    assert HAPROXY is not None
    scp = RecordingSCP("PARTNER", store_dir=tmp_path / "partner", hash_pixels=False,
                       delay_seconds=0.03).start()  # slower than receiving: outboxes fill
    keys = tmp_path / "keys"
    replicas: list[GatewayProcess] = []
    for i in range(3):
        work = tmp_path / f"replica-{i}"
        work.mkdir()
        raw = with_seal(base_config(
            work / "spool", [partner("partner", scp.port, calling_ae_title=f"REPLICA_{i}")],
            ROUTES, study_stable_seconds=1.0, drain_seconds=30), keys)
        raw["profiles"]["research"] = {"method": "none", "deidentify": {}}
        replicas.append(GatewayProcess(raw, work))
    lb_port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_haproxy_config(lb_port, replicas))
    lb: subprocess.Popen[bytes] | None = None
    studies = {generate_uid(): [sample() for _ in range(PER_STUDY)] for _ in range(STUDIES)}
    for study, instances in studies.items():
        for ds in instances:
            ds.StudyInstanceUID = study
    chunks = [(study, instances[k:k + PER_ASSOCIATION]) for study, instances in studies.items()
              for k in range(0, PER_STUDY, PER_ASSOCIATION)]
    acked: set[str] = set()
    unacked: list[Any] = []
    terminated_exit: int | None = None
    try:
        for g in replicas:
            g.start()
        with open(tmp_path / "haproxy.log", "wb") as lb_log:  # the child keeps its own copy
            lb = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                  stderr=lb_log)
        _ready(lb_port, replicas)
        time.sleep(1.0)  # every replica checked up (rise 2 x 200 ms)
        with ThreadPoolExecutor(SENDERS) as pool:  # associations in flight when signalled
            sent_chunks = {pool.submit(_associate, lb_port, datasets): datasets
                           for _, datasets in chunks}
            for n, done in enumerate(as_completed(sent_chunks)):
                if n == len(chunks) // 3:
                    assert replicas[0].proc is not None
                    replicas[0].proc.send_signal(signal.SIGTERM)  # drains, mid-traffic
                if n == 2 * len(chunks) // 3:
                    replicas[1].kill()  # SIGKILL, mid-traffic
                for ds, status in zip(sent_chunks[done], done.result(), strict=True):
                    (acked.add(str(ds.SOPInstanceUID)) if status == 0 else unacked.append(ds))
        assert replicas[0].proc is not None
        terminated_exit = replicas[0].proc.wait(timeout=60)
        resent = len(unacked)
        for _ in range(5):  # the sender re-sends what was not acknowledged
            retry, unacked = unacked, []
            for ds in retry:
                (acked.add(str(ds.SOPInstanceUID)) if _associate(lb_port, [ds]) == [0]
                 else unacked.append(ds))
        held = len(list((tmp_path / "replica-1" / "spool").glob("*/*/*.dcm")))
        replicas[1].start()  # the killed replica comes back on its own spool
        secret = uid_secret(keys)
        want = {derive_uid(secret, "partner", sop) for sop in acked}
        deadline = time.monotonic() + 120
        while not want <= scp.received_sops and time.monotonic() < deadline:
            time.sleep(0.2)
        drained_left = [p for state in ("inbox", "work", "outbox")
                        for p in (tmp_path / "replica-0" / "spool" / state).rglob("*.dcm")]
    finally:
        if lb is not None:
            lb.terminate()
            lb.wait(timeout=10)
        for g in replicas:
            g.stop()
        scp.stop()
    sent = sum(len(v) for v in studies.values())
    assert not unacked, f"{len(unacked)} of {sent} instances never acknowledged"
    assert len(acked) == sent
    missing = want - scp.received_sops
    assert not missing, f"{len(missing)} acknowledged instances never reached the partner"
    assert terminated_exit == 0  # the SIGTERM'd replica drained and exited cleanly
    assert drained_left == []  # and delivered what it had acknowledged before it went
    callers = scp.callers
    per_replica: dict[str, int] = {}
    for aes in callers.values():
        for ae in aes:
            per_replica[ae] = per_replica.get(ae, 0) + 1
    split = 0
    for study, instances in studies.items():
        derived = {derive_uid(secret, "partner", str(ds.SOPInstanceUID)) for ds in instances}
        study_uids = {str(dcmread(tmp_path / "partner" / f"{sop}.dcm",
                                  stop_before_pixels=True).StudyInstanceUID) for sop in derived}
        assert study_uids == {derive_uid(secret, "partner", study)}  # one release identity
        split += len(set().union(*(callers[sop] for sop in derived))) > 1
    print(f"\nacknowledged {len(acked)}/{sent}, {resent} re-sent, delivered "
          f"{len(scp.received_sops)} ({scp.duplicates} duplicates), {split}/{STUDIES} studies "
          f"split across replicas, per replica {dict(sorted(per_replica.items()))}, "
          f"{held} kept by the killed replica's spool until its restart")
    assert split >= STUDIES // 2, f"only {split} studies were split across replicas"

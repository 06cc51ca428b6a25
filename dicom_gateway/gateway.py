"""The gateway: wires receive -> route -> spool -> study assembly -> protect -> deliver.

::

    C-STORE --> Receiver --(fsync'd)--> spool inbox --> StudyAssembler (quiet for N s)
        --> StudyWorker (ProtectionStage per series) --> spool outbox/<partner>
        --> PartnerQueue workers (PartnerLink, retry/backoff) --> partner PACS

Processes: this one receives, assembles and protects; each partner has a forwarder process
(:mod:`.forwarder`) running its :class:`~.delivery.PartnerQueue`. Threads here: pynetdicom's
(one per inbound association), the assembler, a supervisor that restarts dead forwarders, and
the ops HTTP server. See ``docs/architecture.md``. Every process writes its events into the
audit trail (:mod:`.audit`, decision 0020); the start is refused when the trail cannot be
written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from . import __version__
from .audit import identifier_key, open_trail
from .deid.service import DeidService, needs_deidentification
from .endpoint import OpsEndpoint
from .errors import AuditError, GatewayError
from .forwarder import ForwarderProcess
from .metrics import Metrics, SnapshotCollector
from .receive import Receiver
from .route import Router
from .seal.service import SealService
from .settings import Config
from .spool import Entry, Spool
from .stage import ProtectionStage, configure_device, protection_advice
from .study import StudyAssembler
from .tls import INBOUND_REFUSALS
from .worker import StudyWorker

__all__ = ["Gateway"]

_log = logging.getLogger(__name__)
#: how often an unwritable audit trail is tried again (an ``audit_resumed`` record)
AUDIT_RETRY_SECONDS = 5.0
#: below this much free space in the spool's file system ``/readyz`` says not ready
READY_MIN_FREE_BYTES = 16 * 1024 * 1024


class Gateway:
    """The running node. ``start()`` recovers the spool first, then serves; ``stop()`` drains."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.spool = Spool(config.gateway.spool_dir)
        self.audit = open_trail(config, create=True)
        spec = self.audit.spec if self.audit is not None else None
        #: the key of the UID references in log lines (``logsafe.scrub_logs``, decision 0011)
        self.log_key = identifier_key(config, self.audit)
        self.forwarders = {name: ForwarderProcess(p, config.gateway.spool_dir,
                                                  config.gateway.rescan_seconds, config.log_level,
                                                  spec, self.log_key)
                           for name, p in config.partners.items()}
        self.metrics.registry.register(SnapshotCollector(
            lambda: [f.snapshot for f in self.forwarders.values()]))
        self.metrics.declare({p.method for p in config.profiles.values()},
                             [n for n, p in config.partners.items() if p.key and config.seal])
        self.metrics.declare_links(config.gateway.listen.tls is not None,
                                   {n: p.tls is not None for n, p in config.partners.items()},
                                   INBOUND_REFUSALS)
        self.stage = ProtectionStage(config.profiles, self.metrics)
        sealer = self.sealer = SealService(config) if config.seal is not None else None
        deid = DeidService(config) if config.seal is not None and \
            needs_deidentification(config) else None
        self.worker = StudyWorker(self.spool, self.stage, self.metrics, self._enqueue, sealer,
                                  deid, self.audit)
        self.assembler = StudyAssembler(self.spool, config.gateway.study_stable_seconds,
                                        self.worker, self.metrics, config.gateway.rescan_seconds,
                                        stream=self.worker.stream)
        self.receiver = Receiver(config, self.spool, Router(config.routes), self.metrics,
                                 self.assembler.note_arrival, self.audit)
        self.endpoint: OpsEndpoint | None = None
        self._stop = threading.Event()
        self._draining = False
        self._cut_drain = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self.metrics.spool_free_bytes.set_function(self.spool.free_bytes)
        audit = self.audit
        self.metrics.audit_last_sequence.set_function(audit.last_seq if audit else lambda: -1.0)
        self.metrics.audit_writable.set_function(lambda: float(bool(audit and audit.healthy)))

    def _enqueue(self, partner: str, entry: Entry) -> None:
        self.forwarders[partner].add(entry)

    def start(self) -> None:
        device = configure_device(self.config)  # first: a missing device touches nothing
        self.metrics.protection_device.labels(device=device).set(1)
        for note in protection_advice(self.config):
            _log.warning("%s", note)
        counts = self.spool.recover()
        _log.info("spool recovered at %s: %s", self.spool.root, counts)
        if self.audit is not None:  # AuditError: no start without a writable trail
            self.audit.append("gateway_started", {
                "version": __version__, "pid": os.getpid(), "partners": sorted(self.forwarders),
                "key_ids": self.sealer.key_ids() if self.sealer is not None else {}})
        self.spool.start_pool()
        for forwarder in self.forwarders.values():
            p = forwarder.partner
            if p.tls is None:
                _log.warning("partner %s (%s@%s:%d) over PLAIN TCP, without TLS "
                             "(partners[].tls): headers and pixels cross the network in clear",
                             p.name, p.ae_title, p.host, p.port)
            forwarder.start()
        self.assembler.start()
        self._supervisor.start()
        if self.config.metrics.enabled:
            listen = self.config.metrics.listen
            self.endpoint = OpsEndpoint(listen.host, listen.port, self.metrics.registry,
                                        self.healthy, self.ready)
            self.endpoint.start()
            _log.info("metrics on http://%s:%d/metrics", listen.host, self.endpoint.port)
        self.receiver.start()

    def stop(self) -> None:
        """Stop accepting, then stop assembling and delivering; the spool keeps the rest."""
        self.receiver.stop()
        self._stop.set()
        self.assembler.stop()
        for forwarder in self.forwarders.values():
            forwarder.stop(timeout=forwarder.partner.dimse_timeout_seconds + 10)
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.audit is not None:
            try:
                self.audit.append("gateway_stopped", {"pid": os.getpid()})
            except GatewayError as exc:
                _log.error("audit: %s", exc)
        _log.info("stopped")

    def drain(self, seconds: float) -> dict[str, int]:
        """Stop taking work and finish what is under way, for at most ``seconds`` (SIGTERM;
        :meth:`stop` follows): ``/readyz`` says ``draining``, the listener closes, associations
        in progress may end, streamed instances are handed on and the outboxes delivered. What
        is left stays in the spool for this gateway's next start; returns its counts."""
        self._draining = True
        self.receiver.stop()
        deadline = time.monotonic() + seconds
        _log.info("draining for up to %.0f s: %d association(s) open", seconds,
                  self.receiver.associations)

        def busy() -> bool:
            return bool(self.receiver.associations or self.assembler.streaming or any(
                self.spool.outbox_entries(name) for name in self.forwarders))

        while busy() and time.monotonic() < deadline and not self._cut_drain.wait(0.1):
            pass
        left = {"associations": self.receiver.associations,
                "inbox": sum(1 for _ in self.spool.entries("inbox")),
                "outbox": sum(len(self.spool.outbox_entries(n)) for n in self.forwarders)}
        _log.info("drained: %s left (kept in the spool for the next start)", left)
        return left

    def cut_drain(self) -> None:
        """End :meth:`drain` now (a second signal)."""
        self._cut_drain.set()

    def wait(self) -> None:
        """Block until :meth:`request_stop` (e.g. from a signal handler)."""
        self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`request_stop` was called."""
        return self._stop.is_set()

    def _supervise(self) -> None:
        next_audit_try = 0.0
        while not self._stop.wait(1.0):
            for forwarder in self.forwarders.values():
                forwarder.ensure_running()
            if self.audit is not None and not self.audit.healthy and \
                    time.monotonic() >= next_audit_try:
                next_audit_try = time.monotonic() + AUDIT_RETRY_SECONDS
                with contextlib.suppress(AuditError):  # still failing: /readyz stays 503
                    self.audit.append("audit_resumed", {"pid": os.getpid()})
                    _log.warning("audit trail writable again: instances are accepted")

    def healthy(self) -> tuple[bool, str]:
        dead = [f"forwarder {f.partner.name}" for f in self.forwarders.values() if not f.alive]
        if not self.assembler.alive:
            dead.append("assembler")
        return (not dead, "ok" if not dead else "dead threads: " + ", ".join(dead))

    def ready(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        ok, why = self.healthy()
        if not ok:
            return ok, why
        if not self.receiver.listening:
            return False, "not accepting associations"
        if not os.access(self.spool.root / "inbox", os.W_OK):
            return False, "spool not writable"
        free = self.spool.free_bytes()
        if free < READY_MIN_FREE_BYTES:  # every C-STORE would be answered 0xA700
            return False, f"spool full ({free} bytes free)"
        if self.audit is not None and not self.audit.healthy:
            return False, "audit trail not writable (instances are refused with 0xA700)"
        return True, "ok"

"""Receive: the Storage SCP where every C-STORE is answered.

A C-STORE is answered Success only after the instance and its routing decision are fsync'd in
the spool's inbox (decision 0001). The answer never waits on a partner. Every outcome is a named
status from PS3.4 Annex B.2.3 / PS3.7 Annex C with an ErrorComment; the handler never raises.
Unknown calling AE titles, and called AE titles other than ``gateway.ae_title`` (unless
``gateway.require_called_ae_title`` is false), are rejected at association time (by the
admission gate; under TLS by pynetdicom's checks). With ``gateway.listen.tls`` every
connection is TLS with a client certificate from the configured CA (the handshake runs in
the connection's thread); a calling AE title pinned to certificates is rejected
(A-ASSOCIATE-RJ, calling AE title not recognized) when its certificate is another (decision
0019).

Every association accepted or rejected and every instance stored is recorded in the audit
trail (decision 0020) before the answer: an instance whose ``received`` record cannot be written
is withdrawn from the spool and answered ``0xA700`` (fail closed).

Connections reach pynetdicom through the admission gate (:mod:`.admission`, decision 0022): only
complete A-ASSOCIATE-RQs, and at most ``gateway.max_associations`` at a time.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import uid_to_sop_class
from pynetdicom.transport import ThreadedAssociationServer

from .admission import Admission
from .audit import AuditTrail
from .errors import AuditError, SpoolError
from .intake import Refusal, Status, data_set, read_header, request
from .logsafe import quiet_pynetdicom
from .metrics import Metrics
from .records import RoutingRecord
from .route import Destination, Router
from .settings import Config, releases_per_instance
from .spool import Entry, Spool, safe_key
from .tls import ListenerTLS

__all__ = ["Receiver", "Status", "accept_storage"]

_log = logging.getLogger(__name__)

quiet_pynetdicom()

_VERIFICATION = uid_to_sop_class("1.2.840.10008.1.1")


def accept_storage(ae: AE) -> None:
    """Let ``ae`` accept every Storage SOP Class in any transfer syntax."""
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom's own contexts all name theirs
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)


def _peer(event: evt.Event) -> str:
    """``host:port`` of the remote end of the event's association."""
    info = event.assoc.requestor.address_info
    return f"{info.address}:{info.port}" if info is not None else "?"


def _answer(status: int, comment: str = "") -> Dataset:
    rsp = Dataset()
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment[:64]  # LO
    return rsp


class Receiver:
    """The gateway's Storage SCP plus Verification on ``gateway.listen``.

    Parameters
    ----------
    config : Config
        The loaded configuration.
    spool, router, metrics
        Where instances go, how destinations are chosen, what is counted.
    on_stored : callable
        Called with the study key after an instance is committed (starts the study's timer),
        and ``True`` when every destination's profile releases per instance (decision 0028).
    """

    def __init__(self, config: Config, spool: Spool, router: Router, metrics: Metrics,
                 on_stored: Callable[[str, bool], None], audit: AuditTrail | None = None
                 ) -> None:
        self._config = config
        self._audit = audit
        self._spool = spool
        self._router = router
        self._metrics = metrics
        self._on_stored = on_stored
        self._allowed = set(config.gateway.allowed_callers)
        self._gateway = config.gateway
        self._open: set[int] = set()
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._tls: ListenerTLS | None = None
        self.port: int | None = None

    def start(self) -> None:
        g = self._config.gateway
        if g.listen.tls is not None:  # TLSFileError (names the file) if it broke since the load
            self._tls = ListenerTLS(g.listen.tls, g.limits.handshake_timeout_seconds)
        ae = AE(ae_title=g.ae_title)
        ae.maximum_pdu_size = g.max_pdu_bytes
        ae.require_calling_aet = list(g.allowed_callers)
        ae.require_called_aet = g.require_called_ae_title  # A-ASSOCIATE-RJ (1, 1, 7) under TLS
        ae.acse_timeout = g.acse_timeout_seconds
        ae.dimse_timeout = g.dimse_timeout_seconds
        ae.network_timeout = g.network_timeout_seconds
        accept_storage(ae)
        ae.add_supported_context(_VERIFICATION, ALL_TRANSFER_SYNTAXES)
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_CONN_OPEN, self._handle_open),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_CONN_CLOSE, self._handle_close),
        ]
        if self._tls is not None:
            handlers.append((evt.EVT_REQUESTED, self._handle_requested))
        admission = Admission(g, self._metrics, self._tls is not None, self._record)  # 0022
        server = admission.serve(ae, (g.listen.host, g.listen.port), handlers,
                                 self._tls.ssl_context if self._tls else None)
        self._server = server
        self.port = server.server_address[1]
        if self._tls is not None:
            _log.info("listening as %s on %s:%d with TLS (client certificates required)",
                      g.ae_title, g.listen.host, self.port)
        else:
            _log.warning("listening as %s on %s:%d over PLAIN TCP, without TLS "
                         "(gateway.listen.tls): headers and pixels cross the network in clear",
                         g.ae_title, g.listen.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def associations(self) -> int:
        """Inbound associations open now (they outlive :meth:`stop`, which only closes the
        listener)."""
        with self._lock:
            return len(self._open)

    # -- association bookkeeping ------------------------------------------------------------
    def _handle_open(self, event: evt.Event) -> None:
        sock = event.assoc.dul.socket
        if sock is None or sock.socket is None:
            return
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is None:
            return
        refused = self._tls.handshake(sock.socket)
        if refused is None:
            return
        reason, detail = refused
        self._metrics.tls_refusals.labels(reason=reason).inc()
        _log.warning("TLS handshake refused from %s: %s (%s)", _peer(event), reason, detail)
        self._record("association_rejected", peer=_peer(event), calling_ae="", reason=reason,
                     tls=True)
        event.assoc.acse_timeout = 0  # no A-ASSOCIATE-RQ can follow: end the association now
        sock.close()

    def _handle_requested(self, event: evt.Event) -> None:
        """A calling AE title pinned to certificates must have come with one of them."""
        assert self._tls is not None and event.assoc.dul.socket is not None
        request = event.assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip() if request is not None else ""
        sock = event.assoc.dul.socket.socket
        problem = self._tls.caller_problem(calling, sock) if sock is not None else "no socket"
        if problem is None:
            return
        self._metrics.tls_refusals.labels(reason="calling_ae_mismatch").inc()
        self._metrics.associations.labels(result="rejected").inc()
        _log.warning("association from %s rejected: %s", _peer(event), problem)
        self._record("association_rejected", peer=_peer(event), calling_ae=calling[:16],
                     reason="calling_ae_mismatch", tls=True)
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent: calling AE not recognized
        event.assoc.kill()

    def _handle_accepted(self, event: evt.Event) -> None:
        with self._lock:
            self._open.add(id(event.assoc))
        self._metrics.associations.labels(result="accepted").inc()
        self._metrics.associations_active.inc()
        self._record("association_accepted", peer=_peer(event),
                     calling_ae=event.assoc.requestor.ae_title.strip(),
                     called_ae=event.assoc.acceptor.ae_title.strip(), tls=self._tls is not None)

    def _handle_rejected(self, event: evt.Event) -> None:
        self._metrics.associations.labels(result="rejected").inc()
        _log.warning("association rejected (calling AE not allowed, called AE not recognised "
                     "or limit reached)")
        calling = event.assoc.requestor.ae_title.strip()[:16]
        primitive = event.assoc.requestor.primitive
        called = str(primitive.called_ae_title).strip() if primitive is not None else ""
        if calling not in self._allowed:
            reason = "calling_ae_not_allowed"
        elif not self._gateway.accepts_called(called):
            reason = "called_ae_not_recognised"
        else:
            reason = "association_limit"
        self._record("association_rejected", peer=_peer(event), calling_ae=calling,
                     reason=reason, tls=self._tls is not None)

    def _record(self, event: str, **fields: object) -> None:
        """An association event into the audit trail (a failure is logged: the C-STOREs that
        follow are refused while the trail cannot be written)."""
        if self._audit is None:
            return
        try:
            self._audit.append(event, fields)
        except AuditError as exc:
            _log.error("audit: %s", exc)

    def _handle_close(self, event: evt.Event) -> None:
        with self._lock:
            if id(event.assoc) not in self._open:
                return
            self._open.discard(id(event.assoc))
        self._metrics.associations_active.dec()

    # -- C-STORE ------------------------------------------------------------------------------
    def _handle_store(self, event: evt.Event) -> Dataset:
        started = time.perf_counter()
        calling = event.assoc.requestor.ae_title.strip()
        ae_label = calling if calling in self._allowed else "other"
        try:
            label, comment, size = self._store(event, calling)
            status = Status.SUCCESS
        except Refusal as refusal:
            status, label, comment, size = refusal.status, refusal.label, refusal.comment, 0
            _log.warning("C-STORE refused sop=%s from=%s status=0x%04X: %s",
                         request(event).AffectedSOPInstanceUID, calling, status, comment)
        except Exception:  # never let an exception reach pynetdicom (it would answer 0xC211)
            _log.exception("C-STORE failed sop=%s", request(event).AffectedSOPInstanceUID)
            status, label, comment, size = Status.PROCESSING_FAILURE, "error", "internal error", 0
        self._metrics.received_instances.labels(calling_ae=ae_label, status=label).inc()
        if size:
            self._metrics.received_bytes.labels(calling_ae=ae_label).inc(size)
        self._metrics.receive_seconds.observe(time.perf_counter() - started)
        return _answer(status, comment)

    def _store(self, event: evt.Event, calling: str) -> tuple[str, str, int]:
        req = request(event)
        try:
            ds, has_pixels = read_header(event, self._config.gateway.max_dataset_bytes)
            study = str(ds.StudyInstanceUID or "")
            series = str(ds.SeriesInstanceUID or "")
            sop = str(ds.SOPInstanceUID or "")
            sop_class = str(ds.SOPClassUID or "")
        except Refusal:
            raise
        except Exception as exc:
            raise Refusal(Status.CANNOT_UNDERSTAND, "invalid",
                           f"cannot parse data set: {type(exc).__name__}") from None
        if not (study and series and sop and sop_class):
            raise Refusal(Status.DATASET_MISMATCH, "invalid",
                           "missing Study/Series/SOP Instance UID or SOP Class UID")
        if sop != req.AffectedSOPInstanceUID or sop_class != req.AffectedSOPClassUID:
            raise Refusal(Status.DATASET_MISMATCH, "invalid",
                           "SOP Class/Instance UID differ from the C-STORE request")

        called = event.assoc.acceptor.ae_title.strip()
        destinations = self._route(ds, calling, called)
        if not destinations:
            _log.info("discarded sop=%s from=%s: no route, no_route=discard", sop, calling)
            return "discarded", "", 0
        self._check_pixels(has_pixels, destinations)

        record = RoutingRecord(calling, called, study, series, tuple(destinations))
        header = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
        try:
            with data_set(event).getbuffer() as body:  # the received bytes, written without a copy
                size = len(header) + len(body)
                entry = self._spool.store_incoming(sop, [header, body], record)
        except SpoolError as exc:
            _log.error("spool refused sop=%s: %s", sop, exc)
            label = "out_of_resources" if exc.out_of_space else "error"
            raise Refusal(Status.OUT_OF_RESOURCES, label, str(exc)) from None
        self._audit_received(entry, record, sop)
        self._on_stored(safe_key(study), releases_per_instance(
            self._config.profiles, (d.profile for d in destinations)))
        _log.info("stored sop=%s study=%s from=%s to=%s", sop, study, calling,
                  ",".join(d.partner for d in destinations))
        return "stored", "", size

    def _audit_received(self, entry: Entry, record: RoutingRecord, sop: str) -> None:
        """The ``received`` record (with the routing decision), durable before Success; if it
        cannot be written the instance is withdrawn and refused (a re-send replaces it)."""
        if self._audit is None:
            return
        a = self._audit
        try:
            a.append("received", {
                "study": a.identifier(record.study), "series": a.identifier(record.series),
                "sop": a.identifier(sop), "calling_ae": record.calling_ae,
                "destinations": [{"partner": d.partner, "profile": d.profile, "route": d.route}
                                 for d in record.destinations]})
        except AuditError as exc:
            self._spool.withdraw(entry)
            _log.error("audit trail not writable: refused sop=%s: %s", sop, exc)
            raise Refusal(Status.OUT_OF_RESOURCES, "out_of_resources",
                           "audit trail not writable") from None

    def _route(self, ds: Dataset, calling: str, called: str) -> list[Destination]:
        try:
            destinations = self._router.destinations(ds, calling, called)
        except Exception as exc:
            raise Refusal(Status.CANNOT_UNDERSTAND, "invalid",
                           f"cannot read routing attributes: {type(exc).__name__}") from None
        if destinations:
            return destinations
        no_route = self._config.no_route
        if no_route.action == "forward":
            assert no_route.partner and no_route.profile
            return [Destination(no_route.partner, no_route.profile, "no_route")]
        if no_route.action == "discard":
            return []
        raise Refusal(Status.NOT_AUTHORIZED, "no_route", "no route matches this instance")

    def _check_pixels(self, has_pixels: bool, destinations: list[Destination]) -> None:
        needs = [d for d in destinations if self._config.profiles[d.profile].require_pixel_data]
        if needs and not has_pixels:
            raise Refusal(Status.DATASET_MISMATCH, "invalid",
                           f"no pixel data, but profile {needs[0].profile!r} needs it")

"""Admission of inbound connections: which ones pynetdicom gets, and when (decision 0022).

pynetdicom gives every accepted connection two threads (the association and its DUL reactor,
polling every millisecond) and counts it against ``maximum_associations`` until the ACSE
timeout: nine idle sockets locked out every sender (issue 15). Here the listener's accept loop
is a selector loop (:class:`~.gate.GatedServer`, one thread) and :class:`Admission` decides:

- a connection waits in the gate, a descriptor and no thread, until its A-ASSOCIATE-RQ has
  arrived whole; under TLS until its first bytes (the handshake then runs in its own thread,
  and it still counts as pending until its request);
- each has ``handshake_timeout_seconds`` from the accept; at most ``max_pending_connections``
  are pending, ``max_pending_per_source`` from one address: one more closes the oldest of its
  address (one that sent nothing first), or the oldest of all;
- what is not an A-ASSOCIATE-RQ (:mod:`.wire`) is closed before pynetdicom parses or logs it;
  an unknown calling AE title gets A-ASSOCIATE-RJ (permanent, calling AE not recognized), a
  called AE title other than ``gateway.ae_title`` (unless ``gateway.require_called_ae_title``
  is false) A-ASSOCIATE-RJ (permanent, called AE not recognized);
- only ``max_associations`` requests are handed to pynetdicom at a time; the others wait, first
  come first served, up to ``association_wait_seconds``, then get A-ASSOCIATE-RJ (transient,
  local limit exceeded): back-pressure instead of a retry storm.

Refusals are counted (``inbound_connections_refused_total{reason}``), logged as the first of
each reason and then one summary a minute (:class:`~.peer_log.Tally`); A-ASSOCIATE-RJs are
audited (``association_rejected``) from a queue, off the gate's thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import EventHandlerType

from .gate import Conn, GatedServer
from .metrics import Metrics
from .peer_log import Tally, limit_pynetdicom_logs
from .settings import GatewayConfig
from .wire import Malformed, Request, abort_pdu, needed, read_request, reject_pdu

__all__ = ["REFUSALS", "Admission"]

_log = logging.getLogger(__name__)

#: reasons of ``inbound_connections_refused_total`` (fixed set)
REFUSALS = ("handshake_timeout", "too_many_pending", "too_many_from_source", "malformed",
            "calling_ae_not_allowed", "called_ae_not_recognised", "association_limit")
#: the reasons answered with an A-ASSOCIATE-RJ (also ``associations_total{result="rejected"}``)
_REJECTIONS = ("calling_ae_not_allowed", "called_ae_not_recognised", "association_limit")
_LIMIT_RJ = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded
_CALLING_RJ = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognized
_CALLED_RJ = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognized
_HANDOVER_SECONDS = 10.0  # a handed-over connection without EVT_CONN_OPEN by then is released
_SWEEP_SECONDS = 0.25


class Admission:
    """The admission policy of one listener (module docstring). ``record(event, **fields)``
    writes an audit record (the receiver's)."""

    def __init__(self, gateway: GatewayConfig, metrics: Metrics, tls: bool,
                 record: Callable[..., None]) -> None:
        self._limits, self._max = gateway.limits, gateway.max_associations
        self._acse = gateway.acse_timeout_seconds
        self._allowed = frozenset(gateway.allowed_callers)
        self._gateway = gateway
        self._tls, self._metrics, self._record = tls, metrics, record
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)
        self._pending: dict[int, Conn] = {}  # not associated yet, in accept order
        self._sources: dict[str, dict[int, Conn]] = {}  # the same, by source address
        self._waiting: dict[int, Conn] = {}  # complete requests waiting, first come first
        self._admitted: dict[int, Conn] = {}  # holding one of max_associations
        self._handed: dict[tuple[str, int], Conn] = {}  # handed to pynetdicom, not yet opened
        self._by_assoc: dict[int, Conn] = {}
        self._tls_waiting = 0
        self._server: GatedServer | None = None
        self._next_sweep = 0.0
        self._tally = Tally(_log, "inbound connection refused before association")
        self._logs = limit_pynetdicom_logs()
        self._audit: queue.Queue[dict[str, Any] | None] = queue.Queue(4096)
        self._audit_dropped = 0
        for reason in REFUSALS:
            metrics.connections_refused.labels(reason=reason)

    def serve(self, ae: ApplicationEntity, address: tuple[str, int],
              handlers: list[EventHandlerType],
              ssl_context: ssl.SSLContext | None) -> GatedServer:
        """Start the listener on ``address`` with ``handlers`` (and the gate's own)."""
        # never reached: the gate limits (pending TLS connections and waiters have threads)
        ae.maximum_associations = 2 * (self._max + self._limits.max_pending_connections)
        ours: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, self._opened),
                                        (evt.EVT_CONN_CLOSE, self._closed)]
        if self._tls:
            ours.append((evt.EVT_REQUESTED, self._requested))
        server = ae.make_server(address, evt_handlers=[*handlers, *ours],
                                ssl_context=ssl_context, server_class=GatedServer,
                                gatekeeper=self)
        assert isinstance(server, GatedServer)
        threading.Thread(target=server.serve_forever, name="AcceptorServer@gate",
                         daemon=True).start()
        threading.Thread(target=self._write_audit, name="admission-audit", daemon=True).start()
        ae._servers.append(server)  # as AE.start_server does: AE.shutdown() stops it too
        return server

    # -- the gate's loop (GatedServer's thread) -----------------------------------------------
    def attach(self, server: GatedServer) -> None:
        self._server = server

    def timeout(self) -> float:
        now, wait = time.monotonic(), self._limits.association_wait_seconds
        with self._lock:
            due = [c.deadline for c in itertools.islice(self._pending.values(), 1)]
            due += [c.since + wait for c in itertools.islice(self._waiting.values(), 1)]
        return max(0.0, min([now + 1.0, *due]) - now)

    def accept_failed(self, exc: OSError) -> None:
        self._tally.add("accept_failed", "-", exc.strerror or type(exc).__name__)
        with self._lock:  # make room: a descriptor, most likely
            if self._pending:
                self._make_room(self._pending, "too_many_pending")

    def add(self, sock: socket.socket, address: Any) -> None:
        conn = Conn(sock, address, time.monotonic(), self._limits.handshake_timeout_seconds)
        assert self._server is not None
        with self._lock:
            same = self._sources.get(conn.source)
            if same and len(same) >= self._limits.max_pending_per_source:
                self._make_room(same, "too_many_from_source")
            if len(self._pending) >= self._limits.max_pending_connections:
                self._make_room(self._pending, "too_many_pending")
            self._pending[conn.key] = conn
            self._sources.setdefault(conn.source, {})[conn.key] = conn
            self._gauges()
            self._server.watch(conn)
        self.readable(conn)  # the request may be there already

    def _make_room(self, table: dict[int, Conn], reason: str) -> None:
        """Close the oldest connection of ``table`` that has sent nothing (else its oldest);
        one whose request has arrived meanwhile is taken up instead, and the next one tried."""
        for conn in list(table.values()):
            if conn.seen or conn.in_thread or conn.key not in table:
                continue
            data = conn.peek(self._tls)
            if data is None:
                self._refuse(conn, reason)
                return
            self._process(conn, data)
            if conn.key not in self._pending:
                return  # it left: room made
        if table:
            self._refuse(next(iter(table.values())), reason)

    def readable(self, conn: Conn) -> None:
        data = conn.peek(self._tls)
        if data is not None:
            self._process(conn, data)

    def _process(self, conn: Conn, data: bytes) -> None:
        with self._lock:
            if conn.key not in self._pending and conn.key not in self._waiting:
                return
            if not data:  # the peer hung up (a waiting sender gave up)
                self._forget(conn)
                conn.close(hard=True)
            elif conn.key in self._waiting:
                if conn.request is not None and len(data) > conn.request.length:
                    self._refuse(conn, "malformed", detail="data before the A-ASSOCIATE-AC")
            elif self._tls:  # the handshake and the request go on in the connection's thread
                conn.in_thread = True
                self._start(conn)
            else:
                self._check(conn, data)

    def _check(self, conn: Conn, data: bytes) -> None:
        conn.seen = len(data)
        try:
            request = read_request(data)
        except Malformed as exc:
            self._refuse(conn, "malformed", abort=data[:1] == b"\x01", detail=str(exc))
            return
        if request is None:
            conn.lowat(needed(data))
            return
        conn.request = request
        self._forget(conn)
        if request.calling_ae not in self._allowed:
            self._refuse(conn, "calling_ae_not_allowed", _CALLING_RJ)
        elif not self._gateway.accepts_called(request.called_ae):
            self._refuse(conn, "called_ae_not_recognised", _CALLED_RJ)
        elif not self._waiting and len(self._admitted) < self._max:
            self._admit(conn, 0.0)
        elif (len(self._waiting) >= self._limits.max_pending_connections
              or not self._limits.association_wait_seconds):
            self._refuse(conn, "association_limit", _LIMIT_RJ)
        else:
            conn.since = time.monotonic()
            self._waiting[conn.key] = conn
            if request.checked:  # wake only when it hangs up or sends more
                assert self._server is not None
                conn.lowat(request.length + 1)
                self._server.watch(conn)
            self._gauges()

    def _admit(self, conn: Conn, waited: float) -> None:
        self._waiting.pop(conn.key, None)
        conn.since = time.monotonic()
        self._admitted[conn.key] = conn
        self._metrics.association_wait_seconds.observe(waited)
        self._gauges()
        self._start(conn)

    def _start(self, conn: Conn) -> None:
        assert self._server is not None
        self._handed[conn.host_port] = conn
        try:
            self._server.hand_over(conn)
        except RuntimeError as exc:  # no thread to be had
            self._handed.pop(conn.host_port, None)
            self._admitted.pop(conn.key, None)
            self._forget(conn)
            conn.in_thread = False
            conn.close(hard=True)
            self._tally.add("no_thread", conn.source, str(exc))

    def tick(self) -> None:
        now, wait = time.monotonic(), self._limits.association_wait_seconds
        with self._lock:
            for conn in list(self._pending.values()):
                if conn.deadline > now:
                    break
                self._refuse(conn, "handshake_timeout")
            for conn in list(self._waiting.values()):
                if conn.since + wait > now:
                    break
                self._refuse(conn, "association_limit", _LIMIT_RJ)
            while self._waiting and len(self._admitted) < self._max:
                conn = next(iter(self._waiting.values()))
                self._admit(conn, now - conn.since)
            sweep = now >= self._next_sweep
            if sweep:
                self._next_sweep = now + _SWEEP_SECONDS
                self._sweep(now)
        if not sweep:
            return
        self._tally.flush()
        self._logs.flush()
        if self._audit_dropped:
            _log.error("audit: %d association_rejected record(s) not written: the audit trail "
                       "could not keep up with the refusals", self._audit_dropped)
            self._audit_dropped = 0

    def _sweep(self, now: float) -> None:
        """What pynetdicom's events may have missed (under the lock, a few times a second)."""
        for conn in list(self._admitted.values()):  # in case EVT_CONN_CLOSE never came
            if conn.ended() or (conn.assoc is None and now - conn.since > _HANDOVER_SECONDS):
                self._release(conn)
        for address, conn in list(self._handed.items()):
            if now - conn.since > _HANDOVER_SECONDS:
                del self._handed[address]
        for ident, conn in list(self._by_assoc.items()):
            if conn.ended() and conn.key not in self._admitted:
                del self._by_assoc[ident]
            elif conn.key in self._pending and conn.reader_died():
                # pynetdicom could not read the request (TLS: the gate could not look at it);
                # its association would wait for one until the deadline
                self._refuse(conn, "malformed", detail="pynetdicom could not read the request")
                conn.assoc.dul.to_user_queue.put(None)

    def close_all(self) -> None:
        with self._lock:
            for conn in [*self._pending.values(), *self._waiting.values()]:
                if not conn.in_thread:
                    self._forget(conn)
                    conn.close(hard=True)
        with contextlib.suppress(queue.Full):
            self._audit.put_nowait(None)

    # -- bookkeeping (under the lock) ---------------------------------------------------------
    def _forget(self, conn: Conn) -> None:
        """``conn`` leaves the pending and waiting tables (and the gate's selector)."""
        if self._pending.pop(conn.key, None) is not None:
            same = self._sources.get(conn.source, {})
            same.pop(conn.key, None)
            if not same:
                self._sources.pop(conn.source, None)
        self._waiting.pop(conn.key, None)
        if self._server is not None and not conn.in_thread:
            self._server.unwatch(conn)
        self._gauges()

    def _release(self, conn: Conn) -> None:
        if self._admitted.pop(conn.key, None) is not None:
            self._freed.notify_all()
            self._gauges()
            if self._server is not None:
                self._server.wake()

    def _refuse(self, conn: Conn, reason: str, rj: tuple[int, int, int] | None = None, *,
                abort: bool = False, detail: str = "") -> None:
        self._forget(conn)
        if not conn.in_thread and (rj is not None or abort):
            conn.answer(reject_pdu(*rj) if rj else abort_pdu())
        else:
            conn.close(hard=True)
        self._refused(reason, conn, detail)

    def _refused(self, reason: str, conn: Conn, detail: str = "") -> None:
        self._metrics.connections_refused.labels(reason=reason).inc()
        self._tally.add(reason, conn.source, detail)
        if reason in _REJECTIONS:
            self._metrics.associations.labels(result="rejected").inc()
            calling = conn.request.calling_ae[:16] if conn.request else ""
            try:
                self._audit.put_nowait({"peer": conn.peer, "calling_ae": calling,
                                        "reason": reason, "tls": self._tls})
            except queue.Full:
                self._audit_dropped += 1

    def _gauges(self) -> None:
        self._metrics.connections_pending.set(len(self._pending))
        self._metrics.association_requests_waiting.set(len(self._waiting) + self._tls_waiting)

    def _write_audit(self) -> None:
        while (fields := self._audit.get()) is not None:
            self._record("association_rejected", **fields)

    # -- pynetdicom's events (the connections' threads) ---------------------------------------
    def _opened(self, event: evt.Event) -> None:
        info = event.assoc.requestor.address_info
        with self._lock:
            conn = self._handed.pop((info.address, info.port), None) if info else None
            if conn is None:
                return
            conn.assoc = event.assoc
            self._by_assoc[id(event.assoc)] = conn
            pending = conn.key in self._pending
        sock = event.assoc.dul.socket
        if pending and sock is not None and sock.socket is not None:  # TLS, handshake done
            event.assoc.acse_timeout = max(0.1, conn.deadline - time.monotonic())

    def _requested(self, event: evt.Event) -> None:
        """TLS: the request has come; it waits for a free association like any other."""
        assoc = event.assoc
        with self._lock:
            conn = self._by_assoc.get(id(assoc))
            if conn is None or conn.key not in self._pending:
                return  # closed by the gate meanwhile
            self._forget(conn)
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
        called = str(primitive.called_ae_title).strip() if primitive is not None else ""
        conn.request = Request(0, calling, called, checked=False)
        if (assoc.is_rejected or assoc.is_aborted or calling not in self._allowed
                or not self._gateway.accepts_called(called)):
            return  # refused by the receiver, or pynetdicom refuses it (and the receiver audits)
        started = time.monotonic()
        if self._slot(conn, started + self._limits.association_wait_seconds):
            self._metrics.association_wait_seconds.observe(time.monotonic() - started)
            assoc.acse_timeout = self._acse
            return
        assoc.acse.send_reject(*_LIMIT_RJ)
        self._refused("association_limit", conn)
        assoc.kill()

    def _slot(self, conn: Conn, deadline: float) -> bool:
        with self._freed:
            if self._tls_waiting >= self._limits.max_pending_connections:
                return False
            self._tls_waiting += 1
            self._gauges()
            try:
                while len(self._admitted) >= self._max:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._freed.wait(left)
                conn.since = time.monotonic()
                self._admitted[conn.key] = conn
                return True
            finally:
                self._tls_waiting -= 1
                self._gauges()

    def _closed(self, event: evt.Event) -> None:
        with self._lock:
            conn = self._by_assoc.pop(id(event.assoc), None)
            if conn is not None:
                self._release(conn)
                if conn.key in self._pending:
                    self._forget(conn)

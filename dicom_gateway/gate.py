"""The listener's accept loop: one selector thread between the TCP accept and pynetdicom
(decision 0022; the policy is :mod:`.admission`).

:class:`GatedServer` is pynetdicom's threaded association server with its own
``serve_forever``: it accepts connections in batches on a non-blocking listening socket, keeps
each accepted :class:`Conn` on the selector (a descriptor, no thread) and tells the
:class:`Gatekeeper` what arrives, until the gatekeeper hands the connection to pynetdicom
(:meth:`GatedServer.hand_over`: a thread per connection, as before) or closes it. The listen
queue is 1024 deep (socketserver's default is 5), and pynetdicom's ``gc.collect()`` every 60
accepts is not run (the gate's own objects hold no reference cycles).
"""

from __future__ import annotations

import contextlib
import itertools
import select
import selectors
import socket
import ssl
import struct
import threading
from typing import Any, Protocol

from pynetdicom.ae import ApplicationEntity
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from .wire import MAX_PEEK, Request

__all__ = ["Conn", "GatedServer", "Gatekeeper"]

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_SERIAL = itertools.count()


class Conn:
    """One inbound connection from the accept until its association ends."""

    __slots__ = ("accepted", "address", "assoc", "deadline", "in_thread", "key", "low",
                 "request", "seen", "since", "sock")

    def __init__(self, sock: socket.socket, address: Any, now: float, timeout: float) -> None:
        self.sock, self.address, self.key = sock, address, next(_SERIAL)
        self.accepted = self.since = now
        self.deadline = now + timeout
        self.seen, self.low = 0, 1
        self.request: Request | None = None
        self.assoc: Any = None  # the pynetdicom Association, once it exists
        self.in_thread = False  # handed to a thread before its request (TLS)

    @property
    def source(self) -> str:
        return str(self.address[0])

    @property
    def peer(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def host_port(self) -> tuple[str, int]:
        return str(self.address[0]), int(self.address[1])

    def ended(self) -> bool:
        """Its association's thread has run and finished (EVT_CONN_OPEN comes before it
        starts)."""
        return self.assoc is not None and self.assoc.ident is not None and (
            not self.assoc.is_alive())

    def reader_died(self) -> bool:
        """Its association's DUL thread has stopped (pynetdicom gave up on a PDU)."""
        dul = self.assoc.dul if self.assoc is not None else None
        return dul is not None and dul.ident is not None and not dul.is_alive()

    def peek(self, tls: bool) -> bytes | None:
        """What has arrived, left unread: None if nothing yet, ``b""`` when the peer hung up,
        also when it hung up having sent less than the gate waits for (:meth:`lowat`): the
        selector would wake for that end again and again until the deadline (issue 15's fuzz
        suite, decision 0025). Under TLS only whether a first byte has come (the raw socket,
        not the TLS layer)."""
        try:
            if tls:
                return socket.socket.recv(self.sock, 1, _PEEK)
            data = self.sock.recv(MAX_PEEK + 1, _PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""
        return b"" if 0 < len(data) < self.low and self._hung_up() else data

    def _hung_up(self) -> bool:
        """The peer has shut down its sending side (Linux ``POLLRDHUP``; elsewhere unknown)."""
        flag = getattr(select, "POLLRDHUP", 0)
        if not flag:
            return False
        poller = select.poll()
        poller.register(self.sock, flag)
        return bool(poller.poll(0))

    def lowat(self, size: int) -> None:
        """Wake the selector only once ``size`` bytes are there (or the peer hangs up)."""
        if self.low != size:
            self.low = size
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)

    def answer(self, pdu: bytes) -> None:
        """Read what the peer sent (so that closing sends FIN, not RST), send ``pdu``, close."""
        with contextlib.suppress(OSError):
            left = self.request.length if self.request else MAX_PEEK
            while left > 0:
                got = self.sock.recv(min(left, MAX_PEEK), socket.MSG_DONTWAIT)
                if not got:
                    break
                left -= len(got)
        with contextlib.suppress(OSError):
            self.sock.send(pdu, socket.MSG_DONTWAIT)
        self.close(hard=False)

    def close(self, hard: bool) -> None:
        """Close; ``hard``: with RST, so that nothing of it stays in TIME_WAIT. A connection in
        its own thread (TLS) is only shut down: its thread ends it."""
        with contextlib.suppress(OSError):
            if self.in_thread:
                self.sock.shutdown(socket.SHUT_RDWR)
                return
            if hard:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()


class Gatekeeper(Protocol):
    """What the loop asks of the admission policy (:class:`~.admission.Admission`)."""

    def attach(self, server: GatedServer) -> None: ...

    def add(self, sock: socket.socket, address: Any) -> None: ...

    def readable(self, conn: Conn) -> None: ...

    def tick(self) -> None: ...

    def timeout(self) -> float: ...

    def accept_failed(self, exc: OSError) -> None: ...

    def close_all(self) -> None: ...


class GatedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the gate as its accept loop (module docstring)."""

    request_queue_size = 1024

    def __init__(self, ae: ApplicationEntity, address: tuple[str, int],
                 ae_title: str, contexts: list[PresentationContext],
                 ssl_context: ssl.SSLContext | None = None,
                 evt_handlers: list[EventHandlerType] | None = None, *,
                 gatekeeper: Gatekeeper) -> None:
        self.gatekeeper = gatekeeper
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._stop, self._done = threading.Event(), threading.Event()
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        assert self.socket is not None
        self.socket.setblocking(False)
        sel = self._selector = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self.gatekeeper.attach(self)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(self.gatekeeper.timeout()):
                    if key.data is None:
                        self._accept()
                    elif key.data is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096, socket.MSG_DONTWAIT)
                    else:
                        self.gatekeeper.readable(key.data)
                self.gatekeeper.tick()
        finally:
            self.gatekeeper.close_all()
            sel.close()
            self._done.set()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.get_request()  # wraps for TLS; no handshake yet
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, most likely
                self.gatekeeper.accept_failed(exc)
                return
            self.gatekeeper.add(sock, address)

    def watch(self, conn: Conn) -> None:
        """Wake the loop when ``conn`` has something (see :meth:`Conn.lowat`)."""
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def unwatch(self, conn: Conn) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.sock)

    def hand_over(self, conn: Conn) -> None:
        """pynetdicom takes the connection: a thread, an Association (RuntimeError: no
        thread to be had)."""
        self.unwatch(conn)
        conn.lowat(1)
        self.process_request(conn.sock, conn.address)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def shutdown(self) -> None:
        self._stop.set()
        self.wake()
        self._done.wait(10)
        self.server_close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        with contextlib.suppress(ValueError):
            self.ae._servers.remove(self)

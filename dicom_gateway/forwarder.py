"""The forwarder process: one per partner, so delivery never competes with receiving.

pynetdicom costs ~4 ms of CPU per instance sent; in the receiving process that CPU is taken
under the same GIL as the C-STORE handler, and the sender sees its acknowledgements slow down
whenever a study is being forwarded (measured: sender side 188 -> 92 inst/s). Each partner's
:class:`~.delivery.PartnerQueue` therefore runs in a child process of its own (decision
``docs/decisions/0006-forwarder-processes.md``):

- the parent sends it outbox entry paths over a queue; the child also rescans its outbox every
  ``rescan_seconds`` (entries requeued by ``dicom-gateway spool retry``, or left by a crash);
- the child holds an exclusive ``flock`` on ``outbox/<partner>/.lock``, so two forwarders can
  never serve the same outbox, and it dies with its parent (``PR_SET_PDEATHSIG`` plus a
  parent-pid check);
- the child's delivery metrics reach the parent as exposition text every 0.25 s
  (:class:`~.metrics.SnapshotCollector`); the parent restarts a child that died.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from .audit import TrailSpec
from .metrics import ForwardMetrics
from .settings import PartnerConfig
from .spool import Entry, Spool

__all__ = ["ForwarderProcess"]

_log = logging.getLogger(__name__)
_SNAPSHOT_SECONDS = 0.25
_ctx = mp.get_context("spawn")  # no fork of a threaded process


class ForwarderProcess:
    """Parent-side handle of one partner's forwarder process."""

    def __init__(self, partner: PartnerConfig, spool_root: Path, rescan_seconds: float,
                 log_level: str, audit: TrailSpec | None = None,
                 log_key: bytes | None = None) -> None:
        self.partner = partner
        self._args = (partner, str(spool_root), rescan_seconds, log_level, audit,
                      log_key if log_key is not None else os.urandom(32))
        self._proc: Any = None
        self._commands: Any = None
        self._events: Any = None
        self._reader: threading.Thread | None = None
        self._snapshot = ""
        self._stopping = False
        self.restarts = 0

    @property
    def snapshot(self) -> str:
        """The child's latest metrics exposition text."""
        return self._snapshot

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        self._commands, self._events = _ctx.Queue(), _ctx.Queue()
        self._proc = _ctx.Process(target=_child_main, name=f"forward-{self.partner.name}",
                                  args=(*self._args, self._commands, self._events, os.getpid()),
                                  daemon=True)
        self._proc.start()
        self._reader = threading.Thread(target=self._read_events, args=(self._events,),
                                        name=f"events-{self.partner.name}", daemon=True)
        self._reader.start()

    def ensure_running(self) -> None:
        """Restart the child if it died (called by the gateway's supervisor loop)."""
        if not self._stopping and self._proc is not None and not self._proc.is_alive():
            self.restarts += 1
            _log.error("forwarder for %s exited with %s; restarting (restart %d)",
                       self.partner.name, self._proc.exitcode, self.restarts)
            self.start()

    def add(self, entry: Entry) -> None:
        """Hand a committed outbox entry to the child (it would also find it by rescanning)."""
        if self._commands is not None:
            self._commands.put(str(entry.path))

    def stop(self, timeout: float) -> None:
        self._stopping = True
        if self._proc is None:
            return
        with contextlib.suppress(Exception):
            self._commands.put(None)
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        if self._reader is not None:
            self._reader.join(2)

    def _read_events(self, events: Any) -> None:
        while True:
            try:
                item = events.get(timeout=1.0)
            except queue.Empty:
                if self._proc is None or not self._proc.is_alive():
                    return
                continue
            except (EOFError, OSError):
                return
            if item is None:
                return
            self._snapshot = item


# -- the child -----------------------------------------------------------------------------
def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_main(partner: PartnerConfig, root: str, rescan_seconds: float, log_level: str,
                audit: TrailSpec | None, log_key: bytes, commands: Any, events: Any,
                parent_pid: int) -> None:
    from .delivery import PartnerQueue
    from .logsafe import scrub_logs
    from .priority import run_in_background

    _die_with_parent()
    run_in_background()  # receiving comes first (decision 0028); threads started later inherit
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    logging.basicConfig(level=getattr(logging, log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scrub_logs(log_key)
    spool = Spool(Path(root))
    outbox = Path(root) / "outbox" / partner.name
    outbox.mkdir(parents=True, exist_ok=True)
    lock = os.open(outbox / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # an orphan of a killed gateway may still hold it briefly
    metrics = ForwardMetrics()
    partner_queue = PartnerQueue(partner, spool, metrics,
                                 audit.open() if audit is not None else None)
    partner_queue.start()
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(_SNAPSHOT_SECONDS):
            events.put(generate_latest(metrics.registry).decode())

    publisher = threading.Thread(target=publish, name="metrics", daemon=True)
    publisher.start()
    next_rescan = time.monotonic() + rescan_seconds
    try:
        while os.getppid() == parent_pid:
            try:
                item = commands.get(timeout=0.5)
            except queue.Empty:
                item = ""
            if item is None:
                break
            if item:
                partner_queue.add(Entry(Path(item)))
            if time.monotonic() >= next_rescan:
                partner_queue.rescan()
                next_rescan = time.monotonic() + rescan_seconds
    finally:
        partner_queue.stop()
        stop.set()
        events.put(generate_latest(metrics.registry).decode())
        events.put(None)
        os.close(lock)

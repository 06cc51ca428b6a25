"""Delivery: one outbox queue per partner, worker threads, and where a retry is decided.

Each partner has its own queue and ``associations`` worker threads, each owning one
:class:`~.forward.PartnerLink`; one partner being down never blocks another (decision 0001).

Retry policy (``docs/decisions/0004-retry-policy.md``): an entry's n-th failed attempt schedules
the next one after ``min(max, initial * multiplier**(n-1))`` seconds, +/- ``jitter``. When the
partner itself is unreachable (``scope == "partner"``), the whole partner is held for the same
kind of growing delay and every entry that was due at that moment is charged one attempt: a
down partner costs one probe per worker per hold period, not one connection per queued entry
(no retry storm). After ``max_attempts`` an entry moves to ``failed/`` with the reason.

A partner that takes fewer parallel associations than ``associations`` (a default DCMTK
``storescp`` serves one at a time and leaves the next request unanswered) is not down: when an
association is rejected or aborted while another worker of the same partner holds one open
(or is opening one), that worker stands aside for :data:`FEWER_ASSOCIATIONS_SECONDS` and its
entry goes back to the queue at once, without an attempt charged or the partner held; after that
it tries again.

Each delivery, retry and dead letter is recorded in the audit trail (decision 0020). A delivery
whose ``forwarded`` record cannot be written stays in the outbox and counts as a failed attempt
(reason ``audit_unavailable``, holding the partner): it is sent again later, a duplicate at
worst, and nothing is removed from the outbox that the trail does not show as delivered.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .audit import AuditTrail
from .audit.events import entry_ids
from .errors import AuditError, PartnerRefused, PartnerUnavailable
from .forward import PartnerLink
from .metrics import ForwardMetrics
from .records import RetryState, SetAsideReason
from .settings import PartnerConfig, RetryConfig
from .spool import Entry, Spool

__all__ = ["FEWER_ASSOCIATIONS_SECONDS", "PartnerQueue", "backoff_seconds"]

_log = logging.getLogger(__name__)
_seq = itertools.count()
FEWER_ASSOCIATIONS_SECONDS = 600.0  # how long a worker stands aside after a refused association
_LOOKAHEAD = 32  # queued entries whose SOP class and transfer syntax a new association proposes
_REFUSED_ASSOCIATION = frozenset({"association_rejected", "association_aborted"})


def backoff_seconds(retry: RetryConfig, attempts: int,
                    rand: Callable[[], float] = random.random) -> float:
    """Delay before the next try after ``attempts`` failures (attempts >= 1)."""
    base = min(retry.max_seconds, retry.initial_seconds * retry.multiplier ** max(attempts - 1, 0))
    return base * (1.0 + retry.jitter * (2.0 * rand() - 1.0))


@dataclass(order=True)
class _Item:
    due: float
    seq: int
    entry: Entry = field(compare=False)
    attempts: int = field(default=0, compare=False)
    since: float = field(default_factory=time.time, compare=False)


class PartnerQueue:
    """The outbox of one partner: scheduling, workers, outcomes."""

    def __init__(self, partner: PartnerConfig, spool: Spool, metrics: ForwardMetrics,
                 audit: AuditTrail | None = None) -> None:
        self.partner = partner
        self._audit = audit
        self._spool = spool
        self._metrics = metrics
        self._retry = partner.retry
        self._cond = threading.Condition()
        self._heap: list[_Item] = []
        self._known: dict[str, _Item] = {}  # queued or in flight, by entry name
        self._held_until = 0.0
        self._partner_failures = 0
        self._links: list[PartnerLink] = []
        self._aside_until: dict[int, float] = {}  # worker -> end of its stand-aside (monotonic)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        m = metrics
        m.queue_depth.labels(partner=partner.name).set_function(lambda: len(self._known))
        m.queue_oldest_age.labels(partner=partner.name).set_function(self._oldest_age)
        m.partner_up.labels(partner=partner.name).set(1)
        for result in ("success", "warning"):
            m.forwarded_instances.labels(partner=partner.name, result=result)

    # -- queueing ---------------------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        """Queue a committed outbox entry (idempotent by name)."""
        state = entry.retry_state()
        with self._cond:
            if entry.name in self._known:
                return
            delay = max(0.0, state.not_before - time.time())
            item = _Item(time.monotonic() + delay, next(_seq), entry, state.attempts)
            try:
                item.since = entry.path.stat().st_mtime
            except FileNotFoundError:
                return
            self._known[entry.name] = item
            heapq.heappush(self._heap, item)
            self._cond.notify()

    def rescan(self) -> None:
        """Pick up entries placed by another process (``spool retry``) or left by a crash."""
        for entry in self._spool.outbox_entries(self.partner.name):
            self.add(entry)

    def _upcoming(self) -> list[Path]:
        """The files of the next :data:`_LOOKAHEAD` queued entries, in order (read by a link that
        opens an association, so that it proposes their transfer syntaxes too). A walk down the
        heap from its root: O(k log k) under the lock, whatever the queue's length."""
        paths: list[Path] = []
        with self._cond:
            heap = self._heap
            frontier = [(heap[0], 0)] if heap else []
            while frontier and len(paths) < _LOOKAHEAD:
                item, i = heapq.heappop(frontier)  # items are unique by seq: i never compared
                paths.append(item.entry.path)
                for child in (2 * i + 1, 2 * i + 2):
                    if child < len(heap):
                        heapq.heappush(frontier, (heap[child], child))
        return paths

    def _oldest_age(self) -> float:
        with self._cond:
            oldest = min((i.since for i in self._known.values()), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def _next(self, worker: int, on_idle: Callable[[], None] = lambda: None) -> _Item | None:
        """Block until an entry is due, the partner is not held and ``worker`` does not stand
        aside; None when stopping. ``on_idle`` runs (outside the lock) about once a second while
        nothing is due."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                free = max(self._held_until, self._aside_until.get(worker, 0.0))
                if self._heap and now >= free and self._heap[0].due <= now:
                    return heapq.heappop(self._heap)
                wait = 1.0
                if self._heap:
                    wait = max(self._heap[0].due, free) - now
                if not self._cond.wait(timeout=min(max(wait, 0.005), 1.0)):
                    self._cond.release()
                    try:
                        on_idle()
                    finally:
                        self._cond.acquire()
            return None

    # -- workers ----------------------------------------------------------------------------
    def start(self) -> None:
        self.rescan()
        for i in range(self.partner.associations):
            self._links.append(PartnerLink(self.partner, upcoming=self._upcoming))
            t = threading.Thread(target=self._work, args=(i,),
                                 name=f"forward-{self.partner.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=self.partner.dimse_timeout_seconds + 5)

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def _work(self, worker: int) -> None:
        link = self._links[worker]
        try:
            while True:
                item = self._next(worker, on_idle=link.release_if_idle)
                if item is None:
                    return
                self._attempt(worker, item)
        finally:
            link.close()

    def _attempt(self, worker: int, item: _Item) -> None:
        link = self._links[worker]
        name = self.partner.name
        self._metrics.forward_attempts.labels(partner=name).inc()
        started = time.perf_counter()
        try:
            size = item.entry.path.stat().st_size
            sent = link.send(item.entry.path)
            result = sent.result
        except FileNotFoundError:  # purged by an operator meanwhile
            self._forget(item)
        except PartnerRefused as exc:
            self._give_up(item, exc.reason, str(exc), exc.status, item.attempts + 1)
        except PartnerUnavailable as exc:
            if self._too_many(worker, exc):
                self._stand_aside(worker, item, exc)
            else:
                self._failed(item, exc)
        except Exception as exc:  # a bug must not kill the worker; treat as a failed attempt
            _log.exception("unexpected error forwarding %s to %s", item.entry.name, name)
            self._failed(item, PartnerUnavailable("internal_error", repr(exc), scope="instance"))
        else:
            if not self._note("forwarded", item.entry, result=result):
                self._failed(item, PartnerUnavailable(
                    "audit_unavailable", "delivered, but the audit trail is not writable: the "
                    "instance stays in the outbox and is sent again", scope="partner"))
                return
            elapsed = time.perf_counter() - started
            self._metrics.forward_seconds.labels(partner=name).observe(elapsed)
            self._metrics.forwarded_instances.labels(partner=name, result=result).inc()
            self._metrics.forwarded_bytes.labels(partner=name).inc(size)
            if sent.reencoded is not None:
                original, encoded = sent.reencoded
                self._metrics.reencoded_instances.labels(partner=name, original=original,
                                                         sent=encoded).inc()
            self._metrics.partner_up.labels(partner=name).set(1)
            self._spool.delivered(item.entry)
            with self._cond:
                self._partner_failures = 0
            self._forget(item)
            _log.info("forwarded %s to %s (%s)", item.entry.name, name, result)

    def _forget(self, item: _Item) -> None:
        with self._cond:
            self._known.pop(item.entry.name, None)

    def _give_up(self, item: _Item, reason: str, message: str, status: int | None,
                 attempts: int) -> None:
        self._forget(item)
        try:
            self._spool.dead_letter(item.entry, self.partner.name, SetAsideReason(
                reason, message, partner=self.partner.name, attempts=attempts, status=status))
        except FileNotFoundError:
            return
        self._metrics.dead_letters.labels(partner=self.partner.name, reason=reason).inc()
        self._note("failed", item.entry, reason=reason, attempts=attempts)
        _log.error("gave up on %s for %s: %s", item.entry.name, self.partner.name, message)

    def _too_many(self, worker: int, exc: PartnerUnavailable) -> bool:
        """The partner refused this worker's association while another worker of ours holds
        one (or has a request out): it takes fewer in parallel than configured, it is not down.
        The last worker not standing aside is never taken out: its failures hold the partner."""
        if exc.reason not in _REFUSED_ASSOCIATION:
            return False
        now = time.monotonic()
        with self._cond:
            others = [link for i, link in enumerate(self._links)
                      if i != worker and self._aside_until.get(i, 0.0) <= now]
        return any(link.connected or link.associating for link in others)

    def _stand_aside(self, worker: int, item: _Item, exc: PartnerUnavailable) -> None:
        """Take ``worker`` out for a while and give its entry straight back (not charged)."""
        now = time.monotonic()
        with self._cond:
            self._aside_until[worker] = now + FEWER_ASSOCIATIONS_SECONDS
            working = sum(1 for i in range(len(self._links))
                          if self._aside_until.get(i, 0.0) <= now)
            item.due = now
            heapq.heappush(self._heap, item)
            self._cond.notify_all()
        self._metrics.forward_retries.labels(partner=self.partner.name,
                                             reason="association_limit").inc()
        _log.warning("%s refused a parallel association (%s) while another is open: using %d of "
                     "%d association(s) for %.0f s; %s goes back to the queue, not charged",
                     self.partner.name, exc.reason, working, self.partner.associations,
                     FEWER_ASSOCIATIONS_SECONDS, item.entry.name)

    def _failed(self, item: _Item, exc: PartnerUnavailable) -> None:
        """Charge the attempt (and, if the partner is down, every due entry) and reschedule."""
        now = time.monotonic()
        charged = [item]
        with self._cond:
            if exc.scope == "partner" and now >= self._held_until:  # one bump per hold period
                self._partner_failures += 1
                self._held_until = now + backoff_seconds(self._retry, self._partner_failures)
                while self._heap and self._heap[0].due <= now:
                    charged.append(heapq.heappop(self._heap))
        if exc.scope == "partner":
            self._metrics.partner_up.labels(partner=self.partner.name).set(0)
        given_up = 0
        for it in charged:
            it.attempts += 1
            if it.attempts >= self._retry.max_attempts:
                self._give_up(it, exc.reason, f"{exc} (after {it.attempts} attempts)", exc.status,
                              it.attempts)
                given_up += 1
                continue
            delay = backoff_seconds(self._retry, it.attempts)
            it.due = now + delay
            self._spool.record_attempt(it.entry, RetryState(
                it.attempts, str(exc), exc.reason, time.time() + delay))
            self._note("retry", it.entry, reason=exc.reason, attempts=it.attempts)
            self._metrics.forward_retries.labels(partner=self.partner.name, reason=exc.reason).inc()
            with self._cond:
                heapq.heappush(self._heap, it)
                self._cond.notify()
        rescheduled = len(charged) - given_up
        _log.warning("forward to %s failed (%s): %s; %d entr%s rescheduled%s", self.partner.name,
                     exc.reason, exc, rescheduled, "y" if rescheduled == 1 else "ies",
                     f", {given_up} given up (failed/)" if given_up else "")

    def _note(self, event: str, entry: Entry, **fields: object) -> bool:
        """Record ``event`` for an outbox entry; False (logged) when the trail cannot take it."""
        if self._audit is None:
            return True
        try:
            self._audit.append(event, {**entry_ids(self._audit, entry.name),
                                       "partner": self.partner.name, **fields})
        except AuditError as exc:
            _log.error("audit: %s (%s of %s for %s)", exc, event, entry.name, self.partner.name)
            return False
        return True

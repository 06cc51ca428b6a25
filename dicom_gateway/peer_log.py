"""Logging whose volume a peer controls, bounded (decision 0022; issue 15).

A malformed or hostile peer can make pynetdicom log an error with a traceback per connection,
quoting what it sent. :func:`limit_pynetdicom_logs` puts a :class:`PeerLogLimit` on every
pynetdicom logger of the process that listens:

- an exception's traceback becomes one line: its type and the first :data:`EXCEPTION_CHARS`
  characters of its message, control characters escaped (:func:`.logsafe.one_line`);
- a message is cut at :data:`MESSAGE_CHARS` characters;
- each call site logs at most ``burst`` records per ``window`` seconds; the others are counted,
  and the count is logged once the window is over (:meth:`PeerLogLimit.flush`, called by the
  admission gate's loop, or with the site's next record);
- a pynetdicom thread (a DUL reactor, an association) that dies of an exception, as a reactor
  does on some malformed PDUs (a command set without a Command Field, an A-ABORT with an
  invalid source; found by the fuzz suite, decision 0025), is logged the same way on
  ``pynetdicom.threads``, instead of Python's default: a traceback written straight to stderr
  around the logging (:func:`threading.excepthook`). Other threads keep the previous hook.

:class:`Tally` is the same idea for the gateway's own lines about refused connections: the
first of each kind is logged, then one summary per window with the counts and the busiest
source addresses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from .logsafe import one_line

__all__ = ["EXCEPTION_CHARS", "MESSAGE_CHARS", "PeerLogLimit", "Tally", "limit_pynetdicom_logs"]

MESSAGE_CHARS = 512
EXCEPTION_CHARS = 200
_LOG = logging.getLogger("dicom_gateway.peer_log")
_THREADS = logging.getLogger("pynetdicom.threads")  # limited with the other pynetdicom loggers


class PeerLogLimit(logging.Filter):
    """A logger filter: tracebacks summarised, messages cut, each call site rate limited
    (module docstring)."""

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self._lock = threading.Lock()
        self._sites: dict[tuple[str, str, int], list[float]] = {}  # [window start, logged, held]

    def filter(self, record: logging.LogRecord) -> bool:
        site = (record.name, record.pathname, record.lineno)
        now = time.monotonic()
        with self._lock:
            state = self._sites.setdefault(site, [now, 0, 0])
            held = 0
            if now - state[0] >= self.window:
                held = int(state[2])
                state[:] = [now, 0, 0]
            if state[1] >= self.burst:
                state[2] += 1
                return False
            state[1] += 1
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            text = one_line(message, MESSAGE_CHARS)
        elif message == str(exc):  # LOGGER.exception(exc): the message is the exception's
            text = f"{type(exc).__name__}: {one_line(message, EXCEPTION_CHARS)}"
        else:
            text = (f"{one_line(message, MESSAGE_CHARS)} ({type(exc).__name__}: "
                    f"{one_line(str(exc), EXCEPTION_CHARS)})")
        record.msg = text + (
            f" [{held} more from this place in the last {self.window:g} s not logged]"
            if held else "")
        record.args, record.exc_info, record.exc_text = None, None, None
        return True

    def flush(self) -> None:
        """Log how many records each site held back in a window that is over."""
        now = time.monotonic()
        with self._lock:
            due = [(site, int(state[2])) for site, state in self._sites.items()
                   if state[2] and now - state[0] >= self.window]
            for site, _ in due:
                self._sites[site] = [now, 0, 0]
        for (name, path, line), held in due:
            _LOG.warning("%d more log record(s) of %s (%s:%d) not logged in the last %g s "
                         "(rate limit on what peers make pynetdicom log)",
                         held, name, path.rsplit("/", 1)[-1], line, self.window)


_LIMIT = PeerLogLimit()
_PREVIOUS_HOOK = [threading.excepthook]  # the hook that was there before ours


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """:data:`threading.excepthook`: a pynetdicom thread's exception as one limited line."""
    thread = args.thread
    if thread is None or not type(thread).__module__.startswith("pynetdicom"):
        _PREVIOUS_HOOK[0](args)
        return
    if args.exc_value is not None:
        _THREADS.error("%s thread ended", type(thread).__name__,
                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def limit_pynetdicom_logs() -> PeerLogLimit:
    """Install the process's :class:`PeerLogLimit` on every pynetdicom logger, and the hook
    for its threads' exceptions (idempotent); returns it (its :meth:`~PeerLogLimit.flush`
    reports what it held back)."""
    import pynetdicom  # noqa: F401  (its modules create their loggers when imported)

    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name == "pynetdicom" or name.startswith("pynetdicom.")) and isinstance(
                logger, logging.Logger) and _LIMIT not in logger.filters:
            logger.addFilter(_LIMIT)
    if threading.excepthook is not _thread_died:
        _PREVIOUS_HOOK[0], threading.excepthook = threading.excepthook, _thread_died
    return _LIMIT


class Tally:
    """Counts of refused connections by reason and source: the first of each reason is logged
    at once, then a summary at most once per ``window`` seconds (:meth:`flush`)."""

    def __init__(self, logger: logging.Logger, what: str, window: float = 60.0) -> None:
        self._log, self._what, self.window = logger, what, window
        self._lock = threading.Lock()
        self._reasons: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()
        self._seen: set[str] = set()
        self._since = time.monotonic()

    def add(self, reason: str, source: str, detail: str = "") -> None:
        with self._lock:
            first = reason not in self._seen
            self._seen.add(reason)
            if not first:
                self._reasons[reason] += 1
                if len(self._sources) < 1024 or source in self._sources:
                    self._sources[source] += 1
        if first:
            self._log.warning("%s from %s: %s%s (further ones are counted and summarised every "
                              "%g s)", self._what, source, reason,
                              f" ({detail})" if detail else "", self.window)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._reasons or (not force and now - self._since < self.window):
                return
            reasons, sources = self._reasons, self._sources
            self._reasons, self._sources, self._since = Counter(), Counter(), now
        self._log.warning(
            "%s: %d more in the last %.0f s (%s); most from %s", self._what,
            sum(reasons.values()), self.window,
            ", ".join(f"{r}={n}" for r, n in sorted(reasons.items())),
            ", ".join(f"{s} ({n})" for s, n in sources.most_common(3)))

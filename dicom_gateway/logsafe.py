"""No patient data in logs, and no line a sender can forge (decision 0011).

pynetdicom logs request and response identifiers (patient names, IDs, dates) at INFO/DEBUG;
every process that uses pynetdicom calls :func:`quiet_pynetdicom` once.

:class:`LogScrub`, installed on the log handlers of ``serve`` and of every forwarder process
(:func:`scrub_logs`), rewrites every record before it is written:

- each UID (message, arguments, exception text; spool paths and entry names included) becomes
  ``uid#`` and the first 16 hex digits of the audit trail's keyed hash of it
  (:meth:`~.audit.trail.AuditTrail.identifier`): UIDs are not names, but they link to the
  patient through the hospital's PACS. The same instance has the same reference in every line
  and process, ``dicom-gateway audit ref UID`` computes it, and without the key a reference
  cannot be turned back into the UID. UIDs of the DICOM standard (``1.2.840.10008.*``: SOP
  classes, transfer syntaxes), IPv4 addresses and short dotted numbers (versions) are kept;
- control characters (CR, LF, NUL, ESC, ...) in the message are escaped (``\\n``, ``\\x00``),
  and every line of an exception's text is indented, so that no value from the wire can start
  a line of its own: one record is one line plus an indented traceback;
- a message longer than :data:`MAX_MESSAGE` characters, or a traceback longer than
  :data:`MAX_TRACEBACK`, is cut, with the number of characters left out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

__all__ = ["MAX_MESSAGE", "MAX_TRACEBACK", "UID_PATTERN", "LogScrub", "log_reference",
           "one_line", "quiet_pynetdicom", "scrub_logs"]

#: A UID in running text: numeric components, not part of a longer number (:func:`_kept`).
UID_PATTERN = re.compile(r"(?<![\d.])[0-2](?:\.\d+)+(?!\.?\d)")
_STANDARD = "1.2.840.10008."
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_MESSAGE = 4096
MAX_TRACEBACK = 16384


def quiet_pynetdicom() -> None:
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def log_reference(key: bytes, uid: str) -> str:
    """How a log line names ``uid``: ``uid#`` and 16 hex digits of HMAC-SHA256 under ``key``
    (the audit trail's identifier key: the prefix of the trail's name for the UID)."""
    if len(uid) > 64:  # the spool's key of an over-long UID (``spool.safe_key``)
        uid = "h" + hashlib.sha256(uid.encode()).hexdigest()[:40]
    digest = hmac.new(key, uid.encode("utf-8", "replace"), hashlib.sha256)
    return "uid#" + digest.hexdigest()[:16]


def _kept(text: str) -> bool:
    """Not a UID to hide: the standard's, an IPv4 address, a version or a decimal number."""
    parts = text.split(".")
    if text.startswith(_STANDARD) or len(text) < 10 or (len(parts) == 2 and len(text) < 16):
        return True
    return len(parts) == 4 and all(int(p) <= 255 for p in parts)


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else (
        f"{text[:limit]}... ({len(text) - limit} more characters)")


def one_line(text: str, limit: int) -> str:
    """``text`` with its control characters escaped, cut at ``limit`` characters (with the
    number left out): what any log line quoting a peer's value holds."""
    return _cut(_escape(text), limit)


class LogScrub(logging.Filter):
    """A handler filter: UIDs to :func:`log_reference`, control characters escaped, exception
    text indented, lengths bounded (module docstring)."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self._key = key

    def mask(self, text: str) -> str:
        """``text`` with every UID replaced by its reference."""
        return UID_PATTERN.sub(
            lambda m: m[0] if _kept(m[0]) else log_reference(self._key, m[0]), text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = one_line(self.mask(record.getMessage()), MAX_MESSAGE)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            lines = _cut(self.mask(record.exc_text), MAX_TRACEBACK).split("\n")
            record.exc_text = "\n".join("  " + _escape(line) for line in lines)
        if record.stack_info:
            lines = self.mask(record.stack_info).split("\n")
            record.stack_info = "\n".join("  " + _escape(line) for line in lines)
        return True


def scrub_logs(key: bytes) -> None:
    """Install a :class:`LogScrub` on every handler of the root logger (after ``basicConfig``),
    and send Python warnings through logging (pydicom warns with the offending value)."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, LogScrub) for f in handler.filters):
            handler.addFilter(LogScrub(key))

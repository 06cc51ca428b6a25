"""The audit trail's records and the keyed chain that links them (decision 0020).

A record is one line of canonical JSON (sorted keys, no spaces, ASCII only)::

    {"event":"forwarded","fields":{...},"mac":"<64 hex>","prev":"<64 hex>","seq":42,
     "time":"2026-03-01T10:00:00.123456Z","v":1}

``mac`` is HMAC-SHA256 under the chain key of the canonical JSON of the record without
``mac`` (so it covers ``prev``, the previous record's ``mac``; 64 zeros before the first
record). Both keys come from the gateway secret by HKDF-SHA256 with their own ``info``: the
chain key, and the identifier key that turns a UID into the trail's keyed hash of it.

:class:`ChainCheck` reads lines in order and stops at the first that is not a complete line,
not canonical JSON, carries a MAC that does not verify, or does not follow its predecessor
(sequence number and ``prev``): one flipped byte anywhere is one of these.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import AuditError

__all__ = ["GENESIS", "VERSION", "AuditKeys", "ChainCheck", "Record", "authentic", "canonical",
           "make_record"]

VERSION = 1
GENESIS = "0" * 64
_CHAIN_INFO = b"dicom-gateway audit chain v1"
_ID_INFO = b"dicom-gateway audit identifiers v1"


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class AuditKeys:
    """The chain key and the identifier key, derived from the gateway secret."""

    chain: bytes
    ids: bytes

    @classmethod
    def derive(cls, secret: bytes) -> AuditKeys:
        return cls(_hkdf(secret, _CHAIN_INFO), _hkdf(secret, _ID_INFO))

    def identifier(self, value: str) -> str:
        """The trail's name for a UID (or any identifier): 128 bits of HMAC-SHA256, hex."""
        return hmac.new(self.ids, value.encode("utf-8", "replace"),
                        hashlib.sha256).hexdigest()[:32]

    def mac(self, body: Mapping[str, Any]) -> str:
        return hmac.new(self.chain, canonical(dict(body)), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Record:
    """One event of the trail."""

    seq: int
    time: str  # UTC, ISO 8601 with microseconds and "Z"
    event: str
    fields: Mapping[str, Any]
    prev: str
    mac: str

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "seq": self.seq, "time": self.time, "event": self.event,
                "fields": dict(self.fields), "prev": self.prev}

    def line(self) -> bytes:
        return canonical({**self.body(), "mac": self.mac}) + b"\n"


def make_record(keys: AuditKeys, seq: int, time: str, event: str, fields: Mapping[str, Any],
                prev: str) -> Record:
    plain = json.loads(canonical(dict(fields)))  # JSON values only, as a reader will see them
    draft = Record(seq, time, event, plain, prev, "")
    return Record(seq, time, event, plain, prev, keys.mac(draft.body()))


def _parse(line: bytes) -> Record:
    """The record on ``line`` (with its newline); ValueError says what is wrong with it."""
    if not line.endswith(b"\n"):
        raise ValueError("incomplete last record (an append cut short by a crash is repaired "
                         "at the next append; otherwise the file was cut)")
    try:
        doc = json.loads(line)
        record = Record(int(doc["seq"]), str(doc["time"]), str(doc["event"]),
                        dict(doc["fields"]), str(doc["prev"]), str(doc["mac"]))
        if doc.get("v") != VERSION or set(doc) != {"v", "seq", "time", "event", "fields",
                                                   "prev", "mac"}:
            raise ValueError("unknown record layout")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a record ({type(exc).__name__}): the line was altered") from None
    if record.line() != line:
        raise ValueError("not in canonical form: the line was altered")
    return record


def authentic(line: bytes, keys: AuditKeys) -> Record | None:
    """The record on ``line`` if it parses and its MAC verifies (its place in the chain is not
    checked), else None."""
    try:
        record = _parse(line)
    except ValueError:
        return None
    return record if hmac.compare_digest(keys.mac(record.body()), record.mac) else None


class ChainCheck:
    """Checks lines in order; :meth:`feed` raises :class:`AuditError` at the first bad one."""

    def __init__(self, keys: AuditKeys) -> None:
        self._keys = keys
        self.first: Record | None = None
        self.last: Record | None = None
        self.count = 0

    def feed(self, line: bytes, where: str) -> Record:
        expected = self.last.seq + 1 if self.last is not None else None
        at = f"seq {expected}" if expected is not None else "the first record"
        try:
            record = _parse(line)
        except ValueError as exc:
            raise AuditError(f"{at} ({where}): {exc}") from None
        if not hmac.compare_digest(self._keys.mac(record.body()), record.mac):
            read = "" if record.seq == expected else f", read as seq {record.seq}"
            raise AuditError(f"{at} ({where}{read}): the MAC does not verify: the record was "
                             "altered, or written under another key")
        if self.last is not None and (record.seq != expected or record.prev != self.last.mac):
            raise AuditError(f"seq {expected} ({where}): found seq {record.seq} whose prev is "
                             "not the MAC of the record before: records were removed, "
                             "reordered or inserted")
        if self.first is None:
            if record.seq == 1 and record.prev != GENESIS:
                raise AuditError(f"seq 1 ({where}): prev is not the genesis value")
            self.first = record
        self.last = record
        self.count += 1
        return record

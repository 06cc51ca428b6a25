"""The audit trail on disk: append-only JSON Lines, one file per UTC day, one chain.

Layout of the trail's directory (``audit.dir``, default ``<spool_dir>/audit``)::

    audit-YYYY-MM-DD.jsonl   the records of that day (UTC), 0600; the chain runs on across files
    .lock                    flock'd around every append (exclusive) and every check (shared)
    audit-secret.key         only without ``audit.secret`` and a ``seal`` section (decision 0020)

Several processes write (the gateway and one forwarder per partner, decision 0006); each
append takes the exclusive lock, reads the chain head (the last line of the newest file, kept
in memory while the file has not grown under another process), writes its line with one
``write`` on an ``O_APPEND`` descriptor and fsyncs the file (and the directory when the file is
new) before it returns, so the chain stays linear and a returned append survives a crash. A
line cut short by a crash (a SIGKILL inside ``write``) is found by the next append: the file is
truncated back to its last complete record and an ``audit_recovered`` record names the bytes
dropped. Nothing the trail returned is ever dropped: an append returns only after its fsync.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import AuditError
from ..spool import safe_key
from ..spool_tmp import fsync_dir
from .chain import GENESIS, AuditKeys, ChainCheck, Record, authentic, make_record

__all__ = ["AuditTrail", "TrailSpec", "Verdict"]

_PATTERN = "audit-*.jsonl"
_CHUNK = 8192


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tail(path: Path, size: int) -> bytes:
    """The last line of the file's first ``size`` bytes (with its newline if it has one)."""
    with open(path, "rb") as f:
        end, buf = size, b""
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            buf = f.read(end - start) + buf
            end = start
            cut = buf.rfind(b"\n", 0, len(buf) - 1)
            if cut >= 0:
                return buf[cut + 1:]
        return buf


@dataclass(frozen=True)
class TrailSpec:
    """What a process needs to open the trail (picklable: the forwarders get it)."""

    directory: Path
    secret: bytes

    def open(self) -> AuditTrail:
        return AuditTrail(self.directory, self.secret)


@dataclass(frozen=True)
class Verdict:
    """What :meth:`AuditTrail.verify` found."""

    ok: bool
    count: int
    files: int
    first: Record | None
    last: Record | None
    problem: str | None = None


class AuditTrail:
    """Appends keyed, chained records; reads and checks them."""

    def __init__(self, directory: Path, secret: bytes) -> None:
        self.directory = directory
        self.keys = AuditKeys.derive(secret)
        self._spec = TrailSpec(directory, secret)
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._out: tuple[Path, int] | None = None  # the open file and its descriptor
        self._cache: tuple[Path, int, int, str] | None = None  # file, size, seq, mac
        self.healthy = True  # the last append succeeded

    @property
    def spec(self) -> TrailSpec:
        return self._spec

    def identifier(self, uid: str) -> str:
        """The keyed hash under which the trail names a UID (the spool's key of it)."""
        return self.keys.identifier(safe_key(uid))

    def files(self) -> list[Path]:
        try:
            return sorted(self.directory.glob(_PATTERN))
        except OSError:
            return []

    # -- writing ------------------------------------------------------------------------------
    def append(self, event: str, fields: Mapping[str, Any] | None = None) -> Record:
        """Write one record durably; :class:`AuditError` when it cannot be (fail closed)."""
        try:
            with self._lock:
                lock = self._lock_file()
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    record = self._append_locked(event, dict(fields or {}))
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except (OSError, AuditError) as exc:
            self.healthy = False
            if isinstance(exc, AuditError):
                raise
            raise AuditError(f"{self.directory}: cannot write the audit trail: "
                             f"{exc.strerror or exc}") from None
        self.healthy = True
        return record

    def _append_locked(self, event: str, fields: dict[str, Any]) -> Record:
        seq, mac, newest, dropped = self._head()
        now = _now()
        if dropped:
            repair = make_record(self.keys, seq + 1, _stamp(now), "audit_recovered",
                                 {"dropped_bytes": dropped, "after_seq": seq}, mac)
            newest = self._write(repair, newest, now)
            seq, mac = repair.seq, repair.mac
        record = make_record(self.keys, seq + 1, _stamp(now), event, fields, mac)
        self._write(record, newest, now)
        return record

    def _lock_file(self) -> int:
        if self._lock_fd is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd

    def close(self) -> None:
        """Close the descriptors this object keeps open (it reopens them when used again)."""
        with self._lock:
            for fd in (self._lock_fd, self._out[1] if self._out else None):
                if fd is not None:
                    os.close(fd)
            self._lock_fd, self._out, self._cache = None, None, None

    def __del__(self) -> None:
        for fd in (getattr(self, "_lock_fd", None), (getattr(self, "_out", None) or (0, None))[1]):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _head(self) -> tuple[int, str, Path | None, int]:
        """(seq, mac) of the last record, the newest file, and the bytes of a cut-short line
        that were dropped from its end (the caller records that)."""
        dropped = 0
        files = self.files()
        for path in reversed(files):
            size = path.stat().st_size
            cache = self._cache
            if cache is not None and cache[0] == path and cache[1] == size:
                return cache[2], cache[3], files[-1], dropped
            if size == 0:
                continue
            last = _tail(path, size)
            if not last.endswith(b"\n"):  # cut short by a crash: drop it
                os.truncate(path, size - len(last))
                self._fsync_file(path)
                dropped += len(last)
                size -= len(last)
                if size == 0:
                    continue
                last = _tail(path, size)
            record = authentic(last, self.keys)
            if record is None:
                raise AuditError(f"{path}: the last record does not verify; nothing is appended "
                                 "to a trail that may have been altered (dicom-gateway audit "
                                 "verify names the record)")
            return record.seq, record.mac, files[-1], dropped
        return 0, GENESIS, files[-1] if files else None, dropped

    @staticmethod
    def _fsync_file(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, record: Record, newest: Path | None, now: datetime) -> Path:
        today = self.directory / f"audit-{now:%Y-%m-%d}.jsonl"
        path = today if newest is None or today.name > newest.name else newest
        if self._out is None or self._out[0] != path:
            if self._out is not None:
                os.close(self._out[1])
                self._out = None
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._out = (path, fd)
            if created:
                fsync_dir(self.directory)
        fd = self._out[1]
        data = memoryview(record.line())
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
        self._cache = (path, os.fstat(fd).st_size, record.seq, record.mac)
        return path

    # -- reading ------------------------------------------------------------------------------
    def lines(self) -> Iterator[tuple[bytes, str]]:
        """Every line of every file in order, with where it is (``FILE line N``)."""
        for path in self.files():
            with open(path, "rb") as f:
                for number, line in enumerate(f, 1):
                    yield line, f"{path.name} line {number}"

    def records(self) -> Iterator[Record]:
        """The records whose MAC verifies, in order (a broken chain: see :meth:`verify`)."""
        for line, _ in self.lines():
            record = authentic(line, self.keys)
            if record is not None:
                yield record

    def verify(self) -> Verdict:
        """Check the whole chain under a shared lock (no append is half-written meanwhile)."""
        try:
            lock: int | None = os.open(self.directory / ".lock", os.O_RDONLY)
        except OSError:
            lock = None  # no trail written yet, or a directory we may only read
        check = ChainCheck(self.keys)
        try:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_SH)
            for line, where in self.lines():
                check.feed(line, where)
        except AuditError as exc:
            return Verdict(False, check.count, len(self.files()), check.first, check.last,
                           str(exc))
        finally:
            if lock is not None:
                os.close(lock)  # releases the shared lock
        return Verdict(True, check.count, len(self.files()), check.first, check.last)

    def last_seq(self) -> float:
        """The sequence number of the last complete record on disk (-1: none or unreadable);
        for the ``dicom_gateway_audit_last_sequence`` gauge."""
        try:
            for path in reversed(self.files()):
                size = path.stat().st_size
                if size:
                    last = _tail(path, size)
                    if not last.endswith(b"\n"):
                        last = _tail(path, size - len(last)) if size > len(last) else b""
                    record = authentic(last, self.keys) if last else None
                    return float(record.seq) if record is not None else -1.0
        except OSError:
            pass
        return -1.0

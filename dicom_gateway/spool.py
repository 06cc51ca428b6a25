"""The durable spool: the state of an instance is the directory its file is in.

Layout under ``spool_dir`` (see ``docs/decisions/0002-spool-layout.md``)::

    tmp/                                   files being written; removed at start
    inbox/<study>/<sop>~<key>.dcm          received, fsync'd, waiting for the study to be stable
    inbox/<study>/<key>.route.json         the routing record those instances share
    work/<study>/...                       claimed by the assembler; moved back to inbox at start
    outbox/<partner>/<name>.dcm            protected, waiting for delivery (+ .state.json on retry)
    failed/<partner>/<name>.dcm            gave up delivering (+ .reason.json)
    quarantine/<partner>/<name>.dcm        could not be protected (+ .reason.json)

The JSON files are typed, versioned records (:mod:`.records`).

Every file is written to ``tmp/``, fsync'd, then renamed into place, and the directory is
fsync'd (CPython ``mailbox.Maildir`` does the same); nothing changes a file after that, so the
same file may be hard-linked into several outboxes. The routing record (calling/called AE,
study, series, destinations) is the same for most instances of a series, so it is written once
per study and ``key`` (a hash of it) and committed before any ``.dcm`` naming it: a received
instance costs one file and one fsync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom.dataset import Dataset

from .errors import RecordError, SpoolError
from .records import RetryState, RoutingRecord, SetAsideReason
from .spool_tmp import TmpFiles, fsync_dir, spool_error

__all__ = ["Entry", "Spool", "safe_key"]

_log = logging.getLogger(__name__)

_STATES = ("tmp", "inbox", "work", "outbox", "failed", "quarantine")
_UID_RE = re.compile(r"^[0-9][0-9.]{0,63}$")


def safe_key(uid: str) -> str:
    """A file-name-safe key for a UID: the UID itself when valid, else a hash of it."""
    if _UID_RE.match(uid):
        return uid
    import hashlib

    return "h" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def _record_key(record: RoutingRecord) -> tuple[str, bytes]:
    import hashlib

    data = record.to_json().encode()
    return hashlib.sha256(data).hexdigest()[:16], data


@dataclass(frozen=True)
class Entry:
    """One spooled instance: its ``.dcm`` path; sidecars live beside it."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name[: -len(".dcm")]

    @property
    def sop_key(self) -> str:
        """The instance's key (its SOP Instance UID, or a hash of an odd one)."""
        return self.name.split("~", 1)[0]

    @property
    def record_path(self) -> Path:
        """The routing record of an inbox/work entry."""
        return self.path.with_name(f"{self.name.split('~', 1)[-1]}.route.json")

    def sidecar(self, suffix: str) -> Path:
        return self.path.with_name(f"{self.name}{suffix}")

    def retry_state(self) -> RetryState:
        """The outbox entry's retry state (a fresh one if it has none or it is unreadable:
        losing a retry counter only means more retries)."""
        try:
            return RetryState.from_json(self.sidecar(".state.json").read_bytes())
        except (OSError, RecordError):
            return RetryState()

    def set_aside_reason(self) -> SetAsideReason | None:
        """Why a failed/ or quarantine/ entry is there (None if the file is missing or
        unreadable)."""
        try:
            return SetAsideReason.from_json(self.sidecar(".reason.json").read_bytes())
        except (OSError, RecordError):
            return None


class Spool:
    """All moves between spool states; with :mod:`~dicom_gateway.spool_tmp`, where its files are
    written first, the only module that touches ``spool_dir``.

    The spool holds patient data in clear: ``spool_dir`` is created 0700 (an existing one is left
    as it is) and the state directories are made 0700 (also those of an earlier release); files
    are written 0600.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for state in _STATES:
                (root / state).mkdir(mode=0o700, exist_ok=True)
                os.chmod(root / state, 0o700)
        except OSError as exc:
            raise spool_error(exc, f"create its directories under {root}") from None
        self._tmp = TmpFiles(root / "tmp")

    def start_pool(self) -> None:
        """Start pre-creating tmp files for incoming instances (call after :meth:`recover`)."""
        self._tmp.start_pool()

    # -- writing -------------------------------------------------------------------------
    @staticmethod
    def _place(tmp: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def store_incoming(self, sop: str, parts: Sequence[bytes | memoryview],
                       record: RoutingRecord) -> Entry:
        """Commit a received instance (``parts`` concatenated) and its routing record to
        ``inbox/<record.study>/``; returns only once both are durable."""
        key, data = _record_key(record)
        dcm_tmp = self._tmp.write(parts)
        study_dir = self.root / "inbox" / safe_key(record.study)
        entry = Entry(study_dir / f"{safe_key(sop)}~{key}.dcm")
        try:
            with self._lock:  # against remove_empty_study deleting the record meanwhile
                study_dir.mkdir(exist_ok=True)
                if not entry.record_path.exists():
                    os.replace(self._tmp.write([data], ".json"), entry.record_path)
                os.replace(dcm_tmp, entry.path)
            fsync_dir(study_dir)
        except OSError as exc:
            dcm_tmp.unlink(missing_ok=True)
            raise spool_error(exc, "store an instance") from None
        return entry

    def withdraw(self, entry: Entry) -> None:
        """Take back an inbox entry just stored but not acknowledged (its audit record could
        not be written); the sender re-sends it. Gone already (claimed): left to the worker."""
        with self._lock:
            entry.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fsync_dir(entry.path.parent)

    def record(self, entry: Entry) -> RoutingRecord | None:
        """The routing record of an inbox/work entry (None if it is missing or unreadable)."""
        try:
            return RoutingRecord.from_json(entry.record_path.read_bytes())
        except OSError:
            return None
        except RecordError as exc:
            _log.error("%s: %s", entry.record_path, exc)
            return None

    # -- assembly --------------------------------------------------------------------------
    def inbox_studies(self) -> list[str]:
        return sorted(p.name for p in (self.root / "inbox").iterdir() if p.is_dir())

    def inbox_entries(self, study: str) -> list[Entry]:
        return self._entries(self.root / "inbox" / study)

    def claim(self, entries: Sequence[Entry]) -> list[Entry]:
        """Move inbox entries of one study to ``work/`` (a re-send arriving meanwhile lands in
        ``inbox/`` and is not lost with them); durable before returning."""
        claimed = []
        for entry in entries:
            dest = Entry(self.root / "work" / entry.path.parent.name / entry.path.name)
            dest.path.parent.mkdir(parents=True, exist_ok=True)
            _link_or_keep(entry.record_path, dest.record_path)
            try:
                os.replace(entry.path, dest.path)
            except FileNotFoundError:
                continue
            claimed.append(dest)
        if claimed:
            fsync_dir(claimed[0].path.parent)
        return claimed

    def unclaim(self, entry: Entry) -> None:
        """Put a work entry back into the inbox (processing failed; a newer re-send wins)."""
        dest = Entry(self.root / "inbox" / entry.path.parent.name / entry.path.name)
        if not entry.path.exists():
            return
        with self._lock:
            dest.path.parent.mkdir(exist_ok=True)
            _link_or_keep(entry.record_path, dest.record_path)
            if dest.path.exists():
                entry.path.unlink()
            else:
                os.replace(entry.path, dest.path)

    def remove_empty_study(self, study: str) -> None:
        """Remove a study's directories (and routing records) once no instance is left."""
        with self._lock:
            for state in ("inbox", "work"):
                directory = self.root / state / study
                try:
                    if any(p.suffix == ".dcm" for p in directory.iterdir()):
                        continue
                    for record in directory.glob("*.route.json"):
                        record.unlink()
                    directory.rmdir()
                except OSError:
                    pass

    def finish_work(self, entry: Entry) -> None:
        """The entry has been handed on (outbox, quarantine or discarded): drop it."""
        entry.path.unlink(missing_ok=True)

    # -- outbox ---------------------------------------------------------------------------
    def stage_output(self, output: Path | Dataset) -> Path:
        """Write a method's output to ``tmp/`` (a path is hard-linked, not copied)."""
        if isinstance(output, Dataset):
            return self._tmp.write_dataset(output)
        tmp = self._tmp.path(".dcm")
        try:
            os.link(output, tmp)
        except OSError as exc:
            raise spool_error(exc, "link a file") from None
        return tmp

    def commit_outbox(self, partner: str, name: str, staged: Path) -> Entry:
        entry = Entry(self.root / "outbox" / partner / f"{name}.dcm")
        self._place(staged, entry.path)
        entry.sidecar(".state.json").unlink(missing_ok=True)
        return entry

    def sync_outbox(self, partner: str) -> None:
        fsync_dir(self.root / "outbox" / partner)

    def outbox_entries(self, partner: str) -> list[Entry]:
        return self._entries(self.root / "outbox" / partner)

    def record_attempt(self, entry: Entry, state: RetryState) -> None:
        """Persist the retry state of an outbox entry (attempts survive a restart)."""
        try:
            tmp = self._tmp.write([state.to_json().encode()], ".json")
            os.replace(tmp, entry.sidecar(".state.json"))
        except (OSError, SpoolError):
            pass  # losing a retry counter only means more retries; never block delivery on it

    def delivered(self, entry: Entry) -> None:
        entry.sidecar(".state.json").unlink(missing_ok=True)
        entry.path.unlink(missing_ok=True)

    # -- dead ends ------------------------------------------------------------------------
    def dead_letter(self, entry: Entry, partner: str, reason: SetAsideReason) -> Entry:
        """Move an outbox entry to ``failed/<partner>/`` with a reason file."""
        return self._set_aside("failed", partner, entry, reason, move=True)

    def quarantine(self, entry: Entry, partner: str, reason: SetAsideReason) -> Entry:
        """Keep a copy of a work entry in ``quarantine/<partner>/`` with a reason file that
        carries its routing record."""
        return self._set_aside("quarantine", partner, entry,
                               replace(reason, record=self.record(entry)), move=False)

    def _set_aside(self, state: str, partner: str, entry: Entry, reason: SetAsideReason,
                   move: bool) -> Entry:
        dest = Entry(self.root / state / partner / entry.path.name)
        dest.path.parent.mkdir(parents=True, exist_ok=True)
        reason = replace(reason, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        tmp = self._tmp.write([reason.to_json().encode()], ".json")
        os.replace(tmp, dest.sidecar(".reason.json"))
        if move:
            os.replace(entry.path, dest.path)
            entry.sidecar(".state.json").unlink(missing_ok=True)
        else:
            dest.path.unlink(missing_ok=True)
            os.link(entry.path, dest.path)
        fsync_dir(dest.path.parent)
        return dest

    # -- recovery and operator actions -----------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Put the spool back in a consistent state after a crash; run before serving."""
        counts = {"tmp_removed": 0, "work_requeued": 0, "orphans_removed": 0}
        for tmp in (self.root / "tmp").iterdir():
            tmp.unlink(missing_ok=True)
            counts["tmp_removed"] += 1
        for study_dir in [p for p in (self.root / "work").iterdir() if p.is_dir()]:
            inbox_dir = self.root / "inbox" / study_dir.name
            inbox_dir.mkdir(exist_ok=True)
            for f in sorted(study_dir.iterdir(), key=lambda p: p.suffix != ".json"):
                if (inbox_dir / f.name).exists():  # a newer re-send wins
                    f.unlink()
                else:
                    os.replace(f, inbox_dir / f.name)
                    counts["work_requeued"] += f.suffix == ".dcm"
            study_dir.rmdir()
        for study_dir in [p for p in (self.root / "inbox").iterdir() if p.is_dir()]:
            entries = self._entries(study_dir)
            used = {e.record_path.name for e in entries}
            for record in study_dir.glob("*.route.json"):
                if record.name not in used:  # its instance never committed
                    record.unlink()
                    counts["orphans_removed"] += 1
            for entry in entries:
                if not entry.record_path.exists():
                    self._set_aside("quarantine", "_inbox", entry, SetAsideReason(
                        "missing_route_record",
                        "routing record missing; re-send or requeue by hand"), move=False)
                    entry.path.unlink()
            self.remove_empty_study(study_dir.name)
            fsync_dir(self.root / "inbox")
        return counts

    def entries(self, state: str, partner: str | None = None) -> Iterator[tuple[str, Entry]]:
        """Yield (group, entry) for ``state``: group is the partner, or the study for inbox/work."""
        base = self.root / state
        for group in sorted(p for p in base.iterdir() if p.is_dir()):
            if partner is None or group.name == partner:
                for entry in self._entries(group):
                    yield group.name, entry

    def requeue(self, state: str, entry: Entry, partner: str) -> None:
        """Operator retry: a failed entry goes back to its outbox, a quarantined one to inbox."""
        if state == "failed":
            self.commit_outbox(partner, entry.name, entry.path)
        else:
            reason = entry.set_aside_reason()
            if reason is None or reason.record is None:
                raise SpoolError(f"{entry.path}: no routing record, cannot requeue")
            with open(entry.path, "rb") as f:  # re-stored like a new arrival (one copy)
                self.store_incoming(entry.sop_key, [f.read()], reason.record.only(partner))
            entry.path.unlink()
        entry.sidecar(".reason.json").unlink(missing_ok=True)

    def purge(self, state: str, entry: Entry) -> None:
        for suffix in (".reason.json", ".state.json"):
            entry.sidecar(suffix).unlink(missing_ok=True)
        entry.path.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    @staticmethod
    def _entries(directory: Path) -> list[Entry]:
        try:
            files = [p for p in directory.iterdir() if p.suffix == ".dcm"]
        except FileNotFoundError:
            return []
        return [Entry(p) for p in sorted(files, key=_mtime_key)]


def _link_or_keep(source: Path, dest: Path) -> None:
    """Hard-link a routing record into another state's directory unless it is there already
    (a missing source is left to the caller: the worker quarantines an entry without record)."""
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.link(source, dest)


def _mtime_key(p: Path) -> tuple[float, str]:
    try:
        return p.stat().st_mtime, p.name
    except FileNotFoundError:
        return 0.0, p.name

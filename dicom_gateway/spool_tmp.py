"""The spool's ``tmp/`` directory: every spool file is written and fsync'd here first, then
renamed into place by :class:`~dicom_gateway.spool.Spool`.

Empty files are created ahead in a small pool so that a C-STORE does not wait for the file
system to create one; like any tmp file they are removed when the spool recovers at start.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from .errors import SpoolError

__all__ = ["TmpFiles", "fsync_dir", "spool_error"]

_counter = itertools.count()
_POOL_SIZE = 16


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (after a rename or link into it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_error(exc: OSError, what: str) -> SpoolError:
    """The :class:`SpoolError` for ``exc`` (out of space when the disk or quota is full)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return SpoolError(f"spool cannot {what}: {exc.strerror or exc}", out_of_space=full)


class TmpFiles:
    """Durable new files in ``directory`` (the spool's ``tmp/``), written 0600."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pool: list[Path] = []
        self._pool_cond = threading.Condition()
        self._pool_thread: threading.Thread | None = None

    def start_pool(self) -> None:
        """Start pre-creating files for incoming instances (after the spool has recovered)."""
        if self._pool_thread is None:
            self._pool_thread = threading.Thread(target=self._fill_pool, name="spool-tmp",
                                                 daemon=True)
            self._pool_thread.start()

    def path(self, suffix: str) -> Path:
        """A fresh, unused name in ``directory``."""
        name = f"{time.time_ns()}-{threading.get_ident()}-{next(_counter)}{suffix}"
        return self.directory / name

    def _fill_pool(self) -> None:
        """Keep empty files ready: creating a file costs ~0.45 ms on ext4, which a C-STORE
        should not wait for."""
        while True:
            with self._pool_cond:
                while len(self._pool) >= _POOL_SIZE:
                    self._pool_cond.wait()
            path = self.path(".dcm")
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError:
                time.sleep(1.0)  # disk full or read-only: writers create their own and fail loudly
                continue
            with self._pool_cond:
                self._pool.append(path)

    def _open(self, suffix: str) -> tuple[Path, int]:
        with self._pool_cond:
            tmp = self._pool.pop() if suffix == ".dcm" and self._pool else None
            self._pool_cond.notify()
        if tmp is not None:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        tmp = self.path(suffix)
        return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, parts: Sequence[bytes | memoryview], suffix: str = ".dcm") -> Path:
        """A new file holding ``parts`` concatenated, fsync'd; raises :class:`SpoolError`."""
        try:
            tmp, fd = self._open(suffix)
        except OSError as exc:
            raise spool_error(exc, "create a file") from None
        try:
            try:
                views = [memoryview(p).cast("B") for p in parts]
                while views:
                    written = os.writev(fd, views)
                    while views and written >= len(views[0]):
                        written -= len(views[0])
                        views.pop(0)
                    if views and written:
                        views[0] = views[0][written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise spool_error(exc, "write a file") from None
        return tmp

    def write_dataset(self, ds: Dataset) -> Path:
        """A new file holding ``ds`` in DICOM file format, fsync'd; raises :class:`SpoolError`."""
        tmp = self.path(".dcm")
        try:
            with open(tmp, "wb") as f:
                ds.save_as(f, enforce_file_format=True)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise spool_error(exc, "write a file") from None
        return tmp

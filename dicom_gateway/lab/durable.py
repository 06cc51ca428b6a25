"""Files the offline commands write so that a kill at any moment leaves either the old file or
the whole new one: a temporary name beside the target, fsync'd, renamed, the rename made
durable (as the spool does). The temporary name is unique, so that two runs writing the same
file at once (two evaluations sharing a cache) both finish, the last rename winning."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from ..spool_tmp import fsync_dir

__all__ = ["write_durably"]


def write_durably(write: Callable[[Path], object], target: Path) -> None:
    """``write(path)`` to a new name ``<target's name>.<unique>.partial`` beside it, fsync'd,
    renamed to ``target``; the partial file is removed if ``write`` fails. ``write`` creates
    the file, so it gets the permissions any new file gets (the umask's)."""
    partial = target.with_name(f"{target.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        write(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    with partial.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    fsync_dir(target.parent)

"""Files the offline commands write so that a kill at any moment leaves either the old file or
the whole new one: a temporary name beside the target, fsync'd, renamed, the rename made
durable (as the spool does)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..spool_tmp import fsync_dir

__all__ = ["write_durably"]


def write_durably(write: Callable[[Path], object], target: Path) -> None:
    """``write(path)`` to ``target``'s name + ``.partial``, fsync'd, renamed to ``target``."""
    partial = target.with_name(target.name + ".partial")
    write(partial)
    with partial.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    fsync_dir(target.parent)

"""Where an interrupted ``protect-dataset`` resumes: the min-min loop's state after its last
whole round (:class:`~dicom_gateway.protect.unlearnable.RoundState`), kept in the output folder.

A release of thousands of 224x224 images takes hours on a CPU; a kill, a reboot or Ctrl-C would
otherwise throw all of it away. The file is rewritten durably after every round and names what
it belongs to (a digest of the data, the surrogate and the settings): a rerun of the same job
into the same folder goes on after that round and ends with the same release as an
uninterrupted run; a rerun of another job there starts over, saying so. The file is removed
once the release is written.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ..protect.unlearnable import RoundState
from .durable import write_durably

__all__ = ["CHECKPOINT", "RoundCheckpoint"]

CHECKPOINT = ".protect-dataset-checkpoint.pt"
_log = logging.getLogger(__name__)


class RoundCheckpoint:
    """The checkpoint of the job ``key`` in the folder ``out``."""

    def __init__(self, out: Path, key: str) -> None:
        self.path, self.key = out / CHECKPOINT, key

    def load(self) -> RoundState | None:
        """The state to resume from, or None (no checkpoint, another job's, or unreadable)."""
        if not self.path.exists():
            return None
        try:
            saved: dict[str, Any] = torch.load(self.path, weights_only=True)
            if saved.get("key") != self.key:
                _log.warning("%s belongs to another job (other data, surrogate or settings): "
                             "starting over", self.path)
                return None
            return RoundState(**saved["state"])
        except Exception as exc:  # a damaged file costs the rounds, not the job
            _log.warning("%s could not be read (%s: %s): starting over", self.path,
                         type(exc).__name__, exc)
            return None

    def save(self, state: RoundState) -> None:
        saved = {"key": self.key, "state": {f.name: getattr(state, f.name)
                                            for f in dataclasses.fields(state)}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(lambda target: torch.save(saved, target), self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

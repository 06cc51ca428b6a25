"""The one interface every protection method implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from ..errors import ProtectionError

__all__ = ["Outcome", "ProtectionMethod", "StudyContext", "failed"]


@dataclass
class Outcome:
    """What a method made of one spooled instance.

    Exactly one of ``output`` and ``error`` is set. ``output`` is either a path to forward as
    it is (the file is never modified afterwards, so it may be hard-linked) or a new
    :class:`~pydicom.dataset.Dataset` to be written into the partner's outbox.
    ``parameters`` are the method's per-instance parameters (the certificate's content).
    ``residual`` is the exact integer difference original - protected of the stored pixel
    values (``None`` when the pixels are unchanged); the seal encrypts it so that an authorized
    partner can restore the original bit for bit.
    """

    source: Path
    output: Path | Dataset | None = None
    error: ProtectionError | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    residual: Any = None  # numpy integer array shaped like the stored values


@dataclass(frozen=True)
class StudyContext:
    """What a method may know of the study beyond the series it protects, handed to it by the
    worker (a method never reads the spool): the study's DICOM Segmentation instances, whose
    ROIs some methods protect (``unlearnable`` on a segmentation surrogate)."""

    segmentations: tuple[Path, ...] = ()


class ProtectionMethod(Protocol):
    """A protection method: settings in ``__init__``, work in ``__call__``.

    ``__call__`` receives the spooled files of one series (a batch, so methods on a device can
    protect them together) and returns one :class:`Outcome` per file, in order. It must not
    raise for a bad instance: it returns an outcome with a :class:`ProtectionError`.

    A method whose batch takes long may also accept a keyword ``progress``
    (a :data:`~dicom_gateway.progress.ReportProgress`, or ``None``) and call it with the
    instances done as it goes, in fractions if it works on the series as a whole; the stage
    passes it only to methods that accept it and reports the rest of the batch at its end.
    A method that needs more of the study than the series accepts a keyword ``study``
    (a :class:`StudyContext`), passed the same way.
    """

    name: str

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]: ...


def failed(path: Path, reason: str, message: str) -> Outcome:
    """An outcome for an instance the method could not protect."""
    return Outcome(source=path, error=ProtectionError(reason, message))

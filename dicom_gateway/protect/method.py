"""The one interface every protection method implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from ..errors import ProtectionError, SurrogateError

__all__ = ["Outcome", "ProtectionMethod", "check_common_options"]


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


class ProtectionMethod(Protocol):
    """A protection method: settings in ``__init__``, work in ``__call__``.

    ``__call__`` receives the spooled files of one series (a batch, so methods on a device can
    protect them together) and returns one :class:`Outcome` per file, in order. It must not
    raise for a bad instance: it returns an outcome with a :class:`ProtectionError`.
    """

    name: str

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]: ...


def failed(path: Path, reason: str, message: str) -> Outcome:
    """An outcome for an instance the method could not protect."""
    return Outcome(source=path, error=ProtectionError(reason, message))


def is_number(value: Any, low: float, high: float) -> bool:
    """A real number (not a bool) in ``[low, high]``: the methods' range checks."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def check_common_options(options: Mapping[str, Any], defaults: Mapping[str, Any]
                         ) -> tuple[str, str] | None:
    """Checks every surrogate-based method shares: known keys and existing surrogate files."""
    allowed = {"surrogates", *defaults}
    for key in options:
        if key not in allowed:
            return key, f"unknown key (allowed: {', '.join(sorted(allowed))})"
    paths = options.get("surrogates")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        return "surrogates", "required: a list of surrogate model files"
    for p in paths:
        if not Path(p).is_file():
            return "surrogates", f"surrogate file not found: {p}"
        problem = _unusable(Path(p))
        if problem:
            return "surrogates", problem
    return None


def _unusable(path: Path) -> str | None:
    """Why the surrogate file at ``path`` cannot be loaded, or None (also without torch: the
    registry reports that for the method)."""
    try:
        from .surrogate import load_surrogate
    except ImportError:
        return None
    try:
        load_surrogate(path)
    except SurrogateError as exc:
        return str(exc)
    return None

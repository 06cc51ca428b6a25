"""The one interface every protection method implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from ..errors import ProtectionError, SurrogateError

__all__ = ["EPSILON_FORMS", "Outcome", "ProtectionMethod", "check_common_options",
           "parse_epsilon"]


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

    A method whose batch takes long may also accept a keyword ``progress``
    (a :data:`~dicom_gateway.progress.ReportProgress`, or ``None``) and call it with the
    instances done as it goes, in fractions if it works on the series as a whole; the stage
    passes it only to methods that accept it and reports the rest of the batch at its end.
    """

    name: str

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]: ...


def failed(path: Path, reason: str, message: str) -> Outcome:
    """An outcome for an instance the method could not protect."""
    return Outcome(source=path, error=ProtectionError(reason, message))


def is_number(value: Any, low: float, high: float) -> bool:
    """A real number (not a bool) in ``[low, high]``: the methods' range checks."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


EPSILON_FORMS = "a fraction of the normalized range in (0, 0.25], or N/255 (e.g. 8/255)"
_EPSILON_STEPS = 255  # the one explicit denominator: N/255 is N grey levels of an 8-bit image


def parse_epsilon(value: Any) -> float:
    """An L-infinity budget as a fraction of the normalized [0, 1] range.

    The profile key ``epsilon`` and ``protect-dataset --epsilon`` both take it, in one unit: a
    fraction (``0.0314``, a number or its text) or the explicit form ``"N/255"`` (``"8/255"``),
    because "8" alone was read as 8/255 by one entry point and as 8 by the other. Raises
    :class:`ValueError` naming the accepted forms.
    """
    fraction = value
    if isinstance(value, str):
        number, slash, steps = value.strip().partition("/")
        try:
            fraction = float(number) / (int(steps) if slash else 1)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{value!r} is not {EPSILON_FORMS}") from None
        if slash and int(steps) != _EPSILON_STEPS:
            raise ValueError(f"{value!r}: write the budget as N/255 or as a fraction")
    if not is_number(fraction, 0, 0.25) or fraction == 0:
        hint = " (a bare N is a fraction, not N/255)" if is_number(fraction, 1, 255) else ""
        raise ValueError(f"{value!r} is not {EPSILON_FORMS}{hint}")
    return float(fraction)


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

"""The JSON records the spool keeps beside instances, as typed values.

- :class:`RoutingRecord`: ``inbox/<study>/<key>.route.json``, written at receive (and by
  ``spool retry`` of a quarantined instance);
- :class:`RetryState`: ``outbox/<partner>/<name>.state.json``, written after a failed attempt;
- :class:`SetAsideReason`: ``failed/<partner>/<name>.reason.json`` and
  ``quarantine/<partner>/<name>.reason.json``, written when an entry is set aside.

Each record is a frozen dataclass: ``to_json`` writes it with a ``version`` key, ``from_json``
reads every version this release knows and raises :class:`~.errors.RecordError` for anything
else (a corrupt file, or one written by a newer release). Version 1 is the layout written before
records carried a version (the same keys, no ``version``); it is read as it is. A reader ignores
keys it does not know, so adding an optional key keeps the version; a change that an older
reader would misread bumps it (``docs/decisions/0012-spool-records.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from .errors import RecordError
from .route import Destination

__all__ = ["RetryState", "RoutingRecord", "SetAsideReason"]


def _dump(document: dict[str, Any], indent: int | None = None) -> str:
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(document, sort_keys=True, indent=indent, separators=separators)


def _load(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"{what}: not JSON ({exc})") from None
    return _mapping(data, what)


def _mapping(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise RecordError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return dict(data)


def _check_version(data: Mapping[str, Any], current: int, what: str) -> None:
    version = data.get("version", 1)  # version 1: written before records carried one
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= current:
        raise RecordError(f"{what}: version {version!r} is not one this release reads "
                          f"(1 to {current}): written by a newer gateway?")


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str,
           default: Any = ...) -> Any:
    if data.get(key) is None:
        if default is ...:
            raise RecordError(f"{what}: {key!r} is missing")
        return default
    value = data[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise RecordError(f"{what}: {key!r} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class RoutingRecord:
    """Where the instances of one series go: decided at receive, shared by its instances.

    ``study`` and ``series`` are the original Study and Series Instance UIDs; each destination
    names a partner, the profile that protects the instance for it, and the rule that chose it.
    """

    VERSION: ClassVar[int] = 2

    calling_ae: str
    called_ae: str
    study: str
    series: str
    destinations: tuple[Destination, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "calling_ae": self.calling_ae,
                "called_ae": self.called_ae, "study": self.study, "series": self.series,
                "destinations": [{"partner": d.partner, "profile": d.profile, "route": d.route}
                                 for d in self.destinations]}

    def to_json(self) -> str:
        """Compact, keys sorted: the same record always has the same text (and file name)."""
        return _dump(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> RoutingRecord:
        return cls.from_dict(_load(text, "routing record"))

    @classmethod
    def from_dict(cls, data: Any) -> RoutingRecord:
        what = "routing record"
        data = _mapping(data, what)
        _check_version(data, cls.VERSION, what)
        destinations = []
        for item in _field(data, "destinations", list, what):
            item = _mapping(item, f"{what} destination")
            destinations.append(Destination(partner=_field(item, "partner", str, what),
                                            profile=_field(item, "profile", str, what),
                                            route=_field(item, "route", str, what, "")))
        return cls(calling_ae=_field(data, "calling_ae", str, what, ""),
                   called_ae=_field(data, "called_ae", str, what, ""),
                   study=_field(data, "study", str, what),
                   series=_field(data, "series", str, what, ""),
                   destinations=tuple(destinations))

    def only(self, partner: str) -> RoutingRecord:
        """The record with only ``partner``'s destination (all of them if it has none)."""
        mine = tuple(d for d in self.destinations if d.partner == partner)
        return replace(self, destinations=mine or self.destinations)


@dataclass(frozen=True)
class RetryState:
    """The delivery state of an outbox entry after a failed attempt (survives a restart).

    ``not_before`` is wall-clock time (seconds since the epoch) of the next try.
    """

    VERSION: ClassVar[int] = 2

    attempts: int = 0
    last_error: str = ""
    reason: str = ""
    not_before: float = 0.0

    def to_json(self) -> str:
        return _dump({"version": self.VERSION, "attempts": self.attempts,
                      "last_error": self.last_error, "reason": self.reason,
                      "not_before": self.not_before})

    @classmethod
    def from_json(cls, text: str | bytes) -> RetryState:
        what = "retry state"
        data = _load(text, what)
        _check_version(data, cls.VERSION, what)
        return cls(attempts=_field(data, "attempts", int, what, 0),
                   last_error=_field(data, "last_error", str, what, ""),
                   reason=_field(data, "reason", str, what, ""),
                   not_before=float(_field(data, "not_before", (int, float), what, 0.0)))


@dataclass(frozen=True)
class SetAsideReason:
    """Why an entry is in ``failed/`` or ``quarantine/``.

    ``reason`` is a short fixed token (a metrics label), ``message`` the explanation. Dead
    letters also carry ``partner``, ``attempts`` and the partner's last ``status``; quarantined
    instances the ``profile`` that failed and their routing ``record`` (so ``spool retry`` can
    put them back). ``time`` (UTC, ISO 8601) is set by the spool when it writes the file.
    """

    VERSION: ClassVar[int] = 2

    reason: str
    message: str
    time: str = ""
    partner: str | None = None
    attempts: int | None = None
    status: int | None = None
    profile: str | None = None
    record: RoutingRecord | None = None

    def to_json(self) -> str:
        """Indented: operators read these files."""
        return _dump({"version": self.VERSION, "reason": self.reason, "message": self.message,
                      "time": self.time, "partner": self.partner, "attempts": self.attempts,
                      "status": self.status, "profile": self.profile,
                      "record": self.record.to_dict() if self.record is not None else None},
                     indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> SetAsideReason:
        what = "reason file"
        data = _load(text, what)
        _check_version(data, cls.VERSION, what)
        record = data.get("record")
        return cls(reason=_field(data, "reason", str, what),
                   message=_field(data, "message", str, what, ""),
                   time=_field(data, "time", str, what, ""),
                   partner=_field(data, "partner", str, what, None),
                   attempts=_field(data, "attempts", int, what, None),
                   status=_field(data, "status", int, what, None),
                   profile=_field(data, "profile", str, what, None),
                   record=RoutingRecord.from_dict(record) if record else None)

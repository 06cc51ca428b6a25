"""Answers from the audit trail: what went to a partner between two times, where a study went,
and which partner received the instance with given (derived) UIDs.

One pass over the records builds the indexes (:class:`Ledger`); an instance delivered to a
partner is the ``forwarded`` record joined with the ``sealed`` or ``prepared`` record of the
same partner and instance hash, which names the profile, the method and the UIDs it left with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .chain import Record

__all__ = ["Delivery", "Ledger", "PartnerSummary", "parse_time"]


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Delivery:
    """One instance as a partner received it (or was to receive it)."""

    partner: str
    study: str  # keyed hash of the original Study Instance UID
    sop: str  # keyed hash of the original SOP Instance UID
    prepared: Record | None  # the sealed/prepared record: profile, method, out UIDs
    forwarded: tuple[Record, ...]  # every delivery (a crash may deliver twice)

    @property
    def out(self) -> dict[str, str] | None:
        out = self.prepared.fields.get("out") if self.prepared is not None else None
        return dict(out) if isinstance(out, dict) else None

    def field(self, name: str) -> Any:
        return self.prepared.fields.get(name) if self.prepared is not None else None


@dataclass
class PartnerSummary:
    """Where one study went, for one partner."""

    partner: str
    prepared: int = 0
    forwarded: set[str] = field(default_factory=set)  # instance hashes delivered
    first: str | None = None
    last: str | None = None
    profiles: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    out_studies: set[str] = field(default_factory=set)
    retries: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # reason -> instances
    quarantined: dict[str, int] = field(default_factory=dict)


class Ledger:
    """The trail's records, indexed for the questions above."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.prepared: dict[tuple[str, str], Record] = {}
        self.forwarded: dict[tuple[str, str], list[Record]] = defaultdict(list)
        self.by_study: dict[str, list[Record]] = defaultdict(list)
        # uid -> {(partner, sop hash)} (a dict: ordered, one entry per key)
        self.by_out: dict[str, dict[tuple[str, str], None]] = defaultdict(dict)
        self.count = 0
        for record in records:
            self._add(record)

    def _add(self, record: Record) -> None:
        self.count += 1
        f = record.fields
        study, sop, partner = f.get("study"), f.get("sop"), f.get("partner")
        if isinstance(study, str):
            self.by_study[study].append(record)
        if record.event in ("sealed", "prepared") and isinstance(partner, str):
            key = (partner, str(sop))
            self.prepared[key] = record
            out = f.get("out")
            if isinstance(out, dict):
                for kind in ("sop", "series", "study"):
                    uid = out.get(kind)
                    if uid:
                        self.by_out[str(uid)][key] = None
        elif record.event == "forwarded" and isinstance(partner, str):
            self.forwarded[(partner, str(sop))].append(record)

    def delivery(self, partner: str, sop: str) -> Delivery:
        prepared = self.prepared.get((partner, sop))
        study = str(prepared.fields.get("study")) if prepared is not None else ""
        forwarded = tuple(self.forwarded.get((partner, sop), ()))
        if not study and forwarded:
            study = str(forwarded[0].fields.get("study"))
        return Delivery(partner, study, sop, prepared, forwarded)

    # -- what went to partner P between T1 and T2 ---------------------------------------------
    def sent(self, partner: str, since: datetime | None, until: datetime | None
             ) -> list[Delivery]:
        """Every instance forwarded to ``partner`` with a delivery in [since, until]."""
        found = []
        for (name, sop), records in self.forwarded.items():
            if name != partner:
                continue
            inside = tuple(r for r in records if _within(r.time, since, until))
            if inside:
                d = self.delivery(name, sop)
                found.append(Delivery(d.partner, d.study, sop, d.prepared, inside))
        return sorted(found, key=lambda d: d.forwarded[0].time)

    # -- where did study S go -----------------------------------------------------------------
    def study(self, study: str) -> tuple[list[Record], list[PartnerSummary]]:
        """The study's ``received`` records and, per partner, what became of it."""
        received = [r for r in self.by_study.get(study, []) if r.event == "received"]
        partners: dict[str, PartnerSummary] = {}
        for r in self.by_study.get(study, []):
            name = r.fields.get("partner")
            if not isinstance(name, str):
                continue
            s = partners.setdefault(name, PartnerSummary(name))
            _summarize(s, r)
        return received, [partners[n] for n in sorted(partners)]

    # -- which partner got these UIDs ---------------------------------------------------------
    def holders(self, uid: str) -> list[Delivery]:
        """The deliveries whose out UIDs (SOP, series or study) include ``uid``."""
        return [self.delivery(partner, sop) for partner, sop in self.by_out.get(uid, [])]

    def unchanged(self, sop: str) -> list[Delivery]:
        """Deliveries of the instance with hash ``sop`` that left with its original UIDs."""
        return [self.delivery(p, s) for (p, s), r in self.prepared.items()
                if s == sop and r.fields.get("out") is None]


def _within(time: str, since: datetime | None, until: datetime | None) -> bool:
    when = parse_time(time)
    return (since is None or when >= since) and (until is None or when <= until)


def _summarize(s: PartnerSummary, r: Record) -> None:
    f = r.fields
    if r.event in ("sealed", "prepared"):
        s.prepared += 1
        s.profiles.add(str(f.get("profile")))
        s.methods.add(str(f.get("method")))
        out = f.get("out")
        if isinstance(out, dict) and out.get("study"):
            s.out_studies.add(str(out["study"]))
    elif r.event == "forwarded":
        s.forwarded.add(str(f.get("sop")))
        s.first = r.time if s.first is None else min(s.first, r.time)
        s.last = r.time if s.last is None else max(s.last, r.time)
    elif r.event == "retry":
        s.retries += 1
    elif r.event in ("failed", "quarantined"):
        counts = s.failed if r.event == "failed" else s.quarantined
        reason = str(f.get("reason"))
        counts[reason] = counts.get(reason, 0) + 1

"""Routing: ordered rules that pick the partners (and a protection profile) for an instance.

A rule matches when every one of its matchers matches (AND). Rules are evaluated in order and
every matching rule contributes its partners (fan-out); a partner already chosen by an earlier
rule keeps the earlier rule's profile, and a rule with ``stop: true`` ends evaluation when it
matches. See ``docs/decisions/0003-routing.md``.

Matcher syntax, the same for every field: a scalar is an exact match, a list matches any of its
values, ``{regex: PATTERN}`` must match the whole value (:func:`re.fullmatch`). A multi-valued
element matches when any of its values matches; an absent element never matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

__all__ = ["Destination", "Matcher", "Route", "Router", "parse_matcher", "tag_from_key"]


@dataclass(frozen=True)
class Matcher:
    """Exact values or one regular expression; see the module docstring."""

    values: frozenset[str] = frozenset()
    regex: re.Pattern[str] | None = None

    def matches(self, value: str | Sequence[str] | None) -> bool:
        if value is None:
            return False
        candidates = [value] if isinstance(value, str) else list(value)
        for candidate in candidates:
            if self.regex is not None:
                if self.regex.fullmatch(candidate):
                    return True
            elif candidate in self.values:
                return True
        return False


def parse_matcher(spec: Any) -> Matcher:
    """Build a :class:`Matcher` from its YAML form; raise ``ValueError`` with the problem."""
    if isinstance(spec, bool) or spec is None:
        raise ValueError("expected a value, a list of values or {regex: PATTERN}")
    if isinstance(spec, (str, int, float)):
        return Matcher(values=frozenset([str(spec)]))
    if isinstance(spec, list):
        if not spec or not all(isinstance(v, (str, int, float)) for v in spec):
            raise ValueError("a list must hold at least one value and only plain values")
        return Matcher(values=frozenset(str(v) for v in spec))
    if isinstance(spec, dict):
        if set(spec) != {"regex"} or not isinstance(spec["regex"], str):
            raise ValueError("a mapping must be exactly {regex: PATTERN}")
        try:
            return Matcher(regex=re.compile(spec["regex"]))
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
    raise ValueError(f"unsupported matcher type {type(spec).__name__}")


def tag_from_key(key: str) -> BaseTag:
    """Turn a DICOM keyword (``SeriesDescription``) or ``GGGG,EEEE`` into a tag."""
    m = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?", key.strip())
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    tag = tag_for_keyword(key)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {key!r} (use a keyword or 'GGGG,EEEE')")
    return Tag(tag)


@dataclass(frozen=True)
class Route:
    """One routing rule; ``matchers`` holds (field, tag or None, matcher) triples."""

    name: str
    matchers: tuple[tuple[str, BaseTag | None, Matcher], ...]
    to: tuple[str, ...]
    profile: str
    stop: bool = False

    def matches(self, ds: Dataset, calling_ae: str, called_ae: str) -> bool:
        for field, tag, matcher in self.matchers:
            if not matcher.matches(_field_value(field, tag, ds, calling_ae, called_ae)):
                return False
        return True

    @property
    def tags(self) -> Iterable[BaseTag]:
        return (tag for _, tag, _ in self.matchers if tag is not None)


@dataclass(frozen=True)
class Destination:
    """Where one instance goes: a partner, with the profile that protects it on the way."""

    partner: str
    profile: str
    route: str  # the rule's name, or "no_route"


def _field_value(field: str, tag: BaseTag | None, ds: Dataset, calling_ae: str,
                 called_ae: str) -> str | list[str] | None:
    if field == "calling_ae":
        return calling_ae.strip()
    if field == "called_ae":
        return called_ae.strip()
    if field == "modality":
        tag = Tag(0x0008, 0x0060)
    elif field == "sop_class_uid":
        tag = Tag(0x0008, 0x0016)
    assert tag is not None
    if tag not in ds:
        return None
    value = ds[tag].value
    if value is None or value == "":
        return None
    if isinstance(value, (list, MultiValue)):
        return [str(v).strip() for v in value]
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip()


class Router:
    """Evaluates the ordered rules for one instance."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)

    def destinations(self, ds: Dataset, calling_ae: str, called_ae: str) -> list[Destination]:
        chosen: dict[str, Destination] = {}
        for route in self._routes:
            if not route.matches(ds, calling_ae, called_ae):
                continue
            for partner in route.to:
                chosen.setdefault(partner, Destination(partner, route.profile, route.name))
            if route.stop:
                break
        return list(chosen.values())

"""A profile's ``deidentify:`` block: the options of PS3.15 Annex E a research agreement picks,
their codes, and the parsing of the block into :class:`~..settings.DeidConfig`.

Option names are the standard's option titles in lower case with hyphens. Their codes are those
of DICOM PS3.16 CID 7050 "De-identification Method" (scheme ``DCM``); the gateway writes them
into De-identification Method Code Sequence (0012,0064) with the Basic Profile's own code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import GatewayError, KeyFileError
from ..settings import DeidConfig
from .escrow import load_escrow_public

__all__ = ["BASIC_PROFILE", "KEYS", "OPTIONS", "PIXEL_RISKS", "DeidOptionError",
           "parse_deidentify"]

# PS3.16 CID 7050: (code value, code meaning); scheme DCM
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
OPTIONS: dict[str, tuple[str, str]] = {
    "clean-structured-content": ("113104", "Clean Structured Content Option"),
    "clean-descriptors": ("113105", "Clean Descriptors Option"),
    "retain-longitudinal-full-dates": (
        "113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain-longitudinal-modified-dates": (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-uids": ("113110", "Retain UIDs Option"),
    "retain-safe-private": ("113111", "Retain Safe Private Option"),
    "retain-institution-identity": ("113112", "Retain Institution Identity Option"),
}
# instances whose pixels may show identifiers; quarantined unless the profile allows them
PIXEL_RISKS = ("burned-in", "ultrasound", "secondary-capture", "photograph")
KEYS = ("options", "safe_private", "allow_pixel_risk", "max_date_shift_days", "escrow")
_PRIVATE_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),\s*[xX]{2}([0-9A-Fa-f]{2})\)?$")


class DeidOptionError(GatewayError):
    """A ``deidentify`` setting that cannot be used: ``key`` (inside the block) and
    ``problem`` for the configuration error."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _names(data: dict[str, Any], key: str, allowed: tuple[str, ...] | list[str]) -> frozenset[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DeidOptionError(key, "expected a list of names")
    for index, name in enumerate(value):
        if name not in allowed:
            raise DeidOptionError(f"{key}[{index}]", f"unknown {name!r} (allowed: "
                                  f"{', '.join(allowed)})")
    return frozenset(value)


def _safe_private(data: dict[str, Any]) -> tuple[tuple[int, str, int], ...]:
    value = data.get("safe_private", [])
    if not isinstance(value, list):
        raise DeidOptionError("safe_private", "expected a list of {tag: 'GGGG,xxEE', "
                              "creator: NAME}")
    kept = []
    for index, item in enumerate(value):
        where = f"safe_private[{index}]"
        if not isinstance(item, dict) or set(item) != {"tag", "creator"} \
                or not all(isinstance(v, str) for v in item.values()):
            raise DeidOptionError(where, "expected {tag: 'GGGG,xxEE', creator: NAME}")
        found = _PRIVATE_TAG.match(item["tag"].strip())
        if not found or not int(found[1], 16) % 2:
            raise DeidOptionError(f"{where}.tag", "must be a private tag 'GGGG,xxEE' (odd "
                                  "group GGGG, element EE within the creator's block)")
        if not item["creator"].strip():
            raise DeidOptionError(f"{where}.creator", "must name the private creator")
        kept.append((int(found[1], 16), item["creator"].strip(), int(found[2], 16)))
    return tuple(kept)


def _escrow(data: dict[str, Any], base_dir: Path | None) -> str | None:
    """The escrow public key's path (relative to ``base_dir``), checked by loading it."""
    value = data.get("escrow")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DeidOptionError("escrow", "expected the path of the hospital's escrow public key "
                              "(NAME.pub from 'dicom-gateway keys escrow')")
    path = (base_dir if base_dir is not None else Path.cwd()) / value
    try:
        load_escrow_public(path)
    except KeyFileError as exc:
        raise DeidOptionError("escrow", str(exc)) from None
    return str(path)


def parse_deidentify(data: Any, base_dir: Path | None = None) -> DeidConfig:
    """The ``deidentify`` block as settings; a :class:`DeidOptionError` names the problem.
    ``{}`` (or ``true``) is the Basic Profile without options. ``base_dir``: where a relative
    ``escrow`` path starts (the configuration file's folder; default the working folder)."""
    if data is True:
        data = {}
    if not isinstance(data, dict):
        raise DeidOptionError("", "expected a mapping (or true for the Basic Profile alone)")
    for key in data:
        if key not in KEYS:
            raise DeidOptionError(str(key), f"unknown key (allowed: {', '.join(KEYS)})")
    options = _names(data, "options", list(OPTIONS))
    if {"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"} <= options:
        raise DeidOptionError("options", "retain-longitudinal-full-dates and "
                              "retain-longitudinal-modified-dates exclude each other")
    safe = _safe_private(data)
    if safe and "retain-safe-private" not in options:
        raise DeidOptionError("safe_private", "needs the option retain-safe-private")
    days = data.get("max_date_shift_days", 365)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise DeidOptionError("max_date_shift_days", "must be a whole number of days in "
                              "1..3650")
    return DeidConfig(options=options, safe_private=safe,
                      allow_pixel_risk=_names(data, "allow_pixel_risk", PIXEL_RISKS),
                      max_date_shift_days=days, escrow=_escrow(data, base_dir))

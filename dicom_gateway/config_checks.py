"""The value checks of the configuration file: each returns the problem with a value, or None.

:mod:`.config` applies them while it reads the YAML file (``check=`` of its reader).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["AE_RE", "NAME_RE", "ae_title", "known", "name", "non_negative", "port", "positive"]

AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 §6.2: AE, no backslash, <= 16
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port between 0 and 65535"


def ae_title(value: str) -> str | None:
    ok = AE_RE.match(value) and value.strip()
    return None if ok else "must be a DICOM AE title: 1-16 printable characters, no backslash"


def name(value: str) -> str | None:
    return None if NAME_RE.match(value) else ("must match [a-z0-9][a-z0-9_.-]* (used in paths "
                                               "and metric labels)")


def known(what: str, names: Mapping[str, Any]) -> Callable[[Any], str | None]:
    """A check that the value names one of ``names`` (a partner or a profile)."""
    return lambda v: None if v in names else f"unknown {what} {v!r}"

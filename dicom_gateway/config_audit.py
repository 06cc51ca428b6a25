"""The ``audit`` block of the configuration file: where the audit trail is kept and what keys
it (decision 0020; keys in ``docs/configuration.md``).

Read with the configuration's own reader (:mod:`.config` hands it over), so errors name the
file and the key path like every other. A ``secret`` file given here is read at load: missing,
open to other users, not hex or shorter than 16 bytes stops the load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, KeyFileError
from .seal.keys import read_secret
from .settings import AuditConfig

__all__ = ["audit_settings"]


class _Reader(Protocol):
    """What this module needs of the configuration's reader (``config._Reader``)."""

    def error(self, problem: str, key: str | None = None) -> ConfigError: ...

    def mapping(self, allowed: Sequence[str]) -> _Reader: ...

    def get(self, key: str, kind: type, default: Any = ..., *, check: Any = None) -> Any: ...


def audit_settings(r: _Reader, spool_dir: Path, base: Path) -> AuditConfig | None:
    """The ``audit`` block (``r``, absent: all defaults); None when ``enabled`` is false."""
    r.mapping(["enabled", "dir", "secret"])
    enabled = r.get("enabled", bool, True)
    directory = r.get("dir", str, None)
    secret = r.get("secret", str, None)
    if secret is not None:
        try:
            read_secret(base / secret)
        except KeyFileError as exc:
            raise r.error(str(exc), "secret") from None
    if not enabled:
        return None
    return AuditConfig(base / directory if directory else spool_dir / "audit",
                       str(base / secret) if secret else None)

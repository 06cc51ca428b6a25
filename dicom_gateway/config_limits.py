"""The connection-admission keys of the ``gateway`` block: how long and how many inbound
connections may stay unassociated, and how long a request waits for an association (decision
0022; keys in ``docs/configuration.md``).

Read with the configuration's own reader (:mod:`.config` hands over the ``gateway`` block), so
errors name the file and the key path like every other.
"""

from __future__ import annotations

from typing import Any, Protocol

from . import config_checks as checks
from .errors import ConfigError
from .settings import ConnectionLimits

__all__ = ["LIMIT_KEYS", "connection_limits"]

#: the keys of ``gateway`` this module reads (``config._gateway`` allows them)
LIMIT_KEYS = ("handshake_timeout_seconds", "max_pending_connections", "max_pending_per_source",
              "association_wait_seconds")


class _Reader(Protocol):
    """What this module needs of the configuration's reader (``config._Reader``)."""

    def error(self, problem: str, key: str | None = None) -> ConfigError: ...

    def get(self, key: str, kind: type, default: Any = ..., *, check: Any = None) -> Any: ...


def connection_limits(r: _Reader) -> ConnectionLimits:
    """The admission limits from the ``gateway`` block ``r`` (absent keys: the defaults)."""
    base = ConnectionLimits()
    limits = ConnectionLimits(
        handshake_timeout_seconds=r.get("handshake_timeout_seconds", float,
                                        base.handshake_timeout_seconds, check=checks.positive),
        max_pending_connections=r.get("max_pending_connections", int,
                                      base.max_pending_connections, check=checks.positive),
        max_pending_per_source=r.get("max_pending_per_source", int,
                                     base.max_pending_per_source, check=checks.positive),
        association_wait_seconds=r.get("association_wait_seconds", float,
                                       base.association_wait_seconds, check=checks.non_negative),
    )
    if limits.max_pending_per_source > limits.max_pending_connections:
        raise r.error(f"must not be greater than max_pending_connections "
                      f"({limits.max_pending_connections})", "max_pending_per_source")
    return limits

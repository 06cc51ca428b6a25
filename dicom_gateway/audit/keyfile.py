"""Which secret keys the audit trail, and opening the trail of a configuration.

The secret is ``audit.secret`` when given, else the seal's ``uid_secret`` (the gateway secret:
from it the trail derives its own keys with HKDF, decision 0020), else ``audit-secret.key`` in
the trail's directory, created (32 random bytes, hex, 0600) by the first gateway start. That
last one lies beside the trail it keys: whoever can write the trail can read it, so the chain
then only detects accidents and careless edits (``docs/security.md#audit-trail``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import AuditError
from ..seal.keys import read_secret
from ..settings import Config
from .chain import AuditKeys
from .trail import AuditTrail

__all__ = ["OWN_SECRET", "identifier_key", "open_trail", "secret_path"]

_log = logging.getLogger(__name__)
OWN_SECRET = "audit-secret.key"


def secret_path(config: Config) -> Path | None:
    """The file the trail's secret comes from (None: the trail is off)."""
    if config.audit is None:
        return None
    if config.audit.secret is not None:
        return Path(config.audit.secret)
    if config.seal is not None:
        return Path(config.seal.uid_secret)
    return config.audit.dir / OWN_SECRET


def _create(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32).hex().encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    _log.warning("audit trail keyed by %s, created beside the trail: set audit.secret (or a "
                 "seal section) to keep the key out of reach of whoever can write the trail",
                 path)


def open_trail(config: Config, create: bool = False) -> AuditTrail | None:
    """The configuration's audit trail, or None when ``audit.enabled`` is false. ``create``:
    make the trail's own secret when it has none yet (the gateway's start does)."""
    path = secret_path(config)
    if path is None or config.audit is None:
        return None
    if create and config.audit.secret is None and config.seal is None:
        _create(path)
    if not path.exists():
        raise AuditError(f"{path}: no audit secret yet: no gateway has written this trail")
    return AuditTrail(config.audit.dir, read_secret(path))


def identifier_key(config: Config, trail: AuditTrail | None) -> bytes:
    """The key under which log lines name UIDs (``logsafe.log_reference``): the trail's
    identifier key, so that a log reference is the prefix of the trail's name for the UID; with
    the trail off, the same derivation from the seal's ``uid_secret``; with neither, a random
    key for this run of the gateway (references then hold within one run only)."""
    if trail is not None:
        return trail.keys.ids
    if config.seal is not None:
        return AuditKeys.derive(read_secret(Path(config.seal.uid_secret))).ids
    return os.urandom(32)

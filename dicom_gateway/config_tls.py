"""The ``tls`` blocks of the configuration file: ``gateway.listen.tls`` and ``partners[].tls``
(decision 0019; keys in ``docs/configuration.md``).

Read with the configuration's own reader (:mod:`.config` hands it over), so errors name the
file and the key path like every other. Every file is checked by building the TLS context it
would serve with: a missing file, a private key open to other users or owned by another user,
a key that is not the certificate's, or a CA file without a certificate stops the load.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, TLSFileError
from .settings import CallerPin, ListenTLS, PartnerTLS
from .tls import client_context, server_context

__all__ = ["KeyReader", "listen_tls", "partner_tls"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class KeyReader(Protocol):
    """What this module needs of the configuration's reader (``config._Reader``)."""

    data: Any

    def error(self, problem: str, key: str | None = None) -> ConfigError: ...

    def mapping(self, allowed: Sequence[str]) -> KeyReader: ...

    def child(self, key: str | int) -> KeyReader: ...

    def has(self, key: str) -> bool: ...

    def get(self, key: str, kind: type, default: Any = ..., *, check: Any = None) -> Any: ...


def _path(r: KeyReader, key: str, base: Path, required: bool = True) -> str | None:
    value = r.get(key, str) if required else r.get(key, str, None)
    return None if value is None else str(base / value)


def _strings(r: KeyReader, key: str) -> tuple[str, ...]:
    """A string or a list of strings at ``key`` (absent: empty)."""
    if not r.has(key):
        return ()
    value = r.child(key).data
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise r.error("expected a string or a list of strings", key)
    return tuple(values)


def _fingerprints(r: KeyReader, key: str) -> tuple[str, ...]:
    pins = []
    for value in _strings(r, key):
        pin = re.sub(r"[\s:]", "", value).lower()
        if not _SHA256.match(pin):
            raise r.error(f"{value!r} is not a SHA-256 fingerprint (64 hex digits, colons "
                          "allowed)", key)
        pins.append(pin)
    return tuple(pins)


def _built(r: KeyReader, build: Callable[[], object]) -> None:
    """Build the context the settings describe; a file that cannot be used is a config error."""
    try:
        build()
    except TLSFileError as exc:
        raise r.error(str(exc), exc.key) from None


def _callers(r: KeyReader, allowed: Sequence[str]) -> dict[str, CallerPin]:
    if not isinstance(r.data, Mapping):
        raise r.error("expected a mapping of calling AE title to {subject_cn, sha256}")
    pins: dict[str, CallerPin] = {}
    for ae in r.data:
        entry = r.child(str(ae)).mapping(["subject_cn", "sha256"])
        if str(ae) not in allowed:
            raise entry.error("not one of gateway.allowed_callers")
        pin = CallerPin(_strings(entry, "subject_cn"), _fingerprints(entry, "sha256"))
        if not (pin.subject_cn or pin.sha256):
            raise entry.error("give 'subject_cn' or 'sha256' (or both)")
        pins[str(ae)] = pin
    return pins


def listen_tls(r: KeyReader, base: Path, allowed_callers: Sequence[str]) -> ListenTLS:
    """``gateway.listen.tls``: the listener's certificate, key, client CA and caller pins."""
    r.mapping(["certificate", "private_key", "client_ca", "callers"])
    tls = ListenTLS(
        certificate=str(_path(r, "certificate", base)),
        private_key=str(_path(r, "private_key", base)),
        client_ca=str(_path(r, "client_ca", base)),
        callers=_callers(r.child("callers"), allowed_callers) if r.has("callers") else {},
    )
    _built(r, lambda: server_context(tls))
    return tls


def partner_tls(r: KeyReader, base: Path) -> PartnerTLS:
    """``partners[].tls``: how the partner's certificate is checked, and ours."""
    r.mapping(["ca", "sha256", "check_hostname", "server_name", "certificate", "private_key"])
    ca = _path(r, "ca", base, required=False)
    pins = _fingerprints(r, "sha256")
    if ca is None and not pins:
        raise r.error("give 'ca' (the CA of the partner's certificate) or 'sha256' (its "
                      "fingerprint), or both: a certificate nobody checks authenticates no one")
    if ca is None and r.has("check_hostname"):
        raise r.error("host names are checked against 'ca' only; with 'sha256' alone the "
                      "pinned fingerprint is the check", "check_hostname")
    certificate = _path(r, "certificate", base, required=False)
    private_key = _path(r, "private_key", base, required=False)
    if (certificate is None) != (private_key is None):
        raise r.error("'certificate' and 'private_key' go together",
                      "private_key" if private_key is None else "certificate")
    tls = PartnerTLS(
        ca=ca,
        sha256=pins,
        check_hostname=r.get("check_hostname", bool, True),
        server_name=r.get("server_name", str, None),
        certificate=certificate,
        private_key=private_key,
    )
    _built(r, lambda: client_context(tls))
    return tls

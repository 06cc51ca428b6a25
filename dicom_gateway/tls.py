"""TLS on the DICOM listener and on the associations to partners (decision 0019).

Profile: the BCP 195 TLS Secure Transport Connection Profiles of DICOM PS3.15 Annex B,
non-downgrading (BCP 195 = RFC 8996 and RFC 9325): TLS 1.2 or 1.3 only; under TLS 1.2 only
ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (forward secrecy and AEAD); TLS 1.3's
suites are all AEAD. Built on the standard library's :mod:`ssl` (OpenSSL); certificate files
are read with ``cryptography`` only to name the file that is wrong.

- Listener (:class:`ListenerTLS`): the gateway's certificate chain and key; a client
  certificate is required and must chain to ``client_ca``; calling AE titles may be pinned to
  certificates. pynetdicom wraps each accepted socket in its accept loop; the handshake is
  left to the connection's own thread (:meth:`ListenerTLS.handshake`), so a slow or silent
  client never stalls the accept loop.
- Partner (:class:`PartnerTLSLink`, one per delivery link): the partner's certificate checked
  against its CA (host name optional) and/or pinned by SHA-256; the gateway's client
  certificate. A failed handshake is recorded with a reason token (``tls_certificate``: the
  partner's certificate is not the one trusted; ``tls_handshake``: anything else, the partner
  refusing ours included) for the delivery's retry and metrics.
- Reloading: the files are watched (mtime, size, inode) and the context is rebuilt before the
  next handshake after a change. A change that does not load (a half-copied pair) keeps the
  previous context and is logged; nothing else stops, nothing in the spool is touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from cryptography import x509

from .errors import TLSFileError
from .settings import ListenTLS, PartnerTLS

__all__ = [
    "INBOUND_REFUSALS",
    "MINIMUM_VERSION",
    "TLS12_CIPHERS",
    "ListenerTLS",
    "PartnerTLSLink",
    "check_private_key",
    "client_context",
    "fingerprint",
    "server_context",
]

_log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"  # TLS 1.3 suites: OpenSSL's (AEAD)

# reason tokens of refused inbound connections (the ``reason`` label; fixed set)
INBOUND_REFUSALS = ("no_certificate", "untrusted_certificate", "certificate_refused_by_peer",
                    "not_tls", "protocol", "timeout", "closed", "calling_ae_mismatch", "other")
_OPENSSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_certificate",
    "CERTIFICATE_VERIFY_FAILED": "untrusted_certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate_refused_by_peer",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate_refused_by_peer",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_refused_by_peer",
    "TLSV1_ALERT_DECRYPT_ERROR": "certificate_refused_by_peer",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "UNSUPPORTED_PROTOCOL": "protocol",
    "NO_SHARED_CIPHER": "protocol",
    "NO_PROTOCOLS_AVAILABLE": "protocol",
    "VERSION_TOO_LOW": "protocol",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
}


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lowercase hex (what pins are written as)."""
    return hashlib.sha256(der).hexdigest()


def check_private_key(path: Path, key: str = "private_key") -> None:
    """Refuse a private key file that is missing, not a file, open to group or other users, or
    not owned by the user running the gateway (mode 0600 or stricter)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TLSFileError(key, f"{path}: private key file not found") from None
    except OSError as exc:
        raise TLSFileError(key, f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TLSFileError(key, f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise TLSFileError(key, f"{path}: private key is open to group or other users (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    if st.st_uid != os.geteuid():
        raise TLSFileError(key, f"{path}: private key is owned by uid {st.st_uid}, not by the "
                                f"user running the gateway (uid {os.geteuid()})")


def _certificates(path: str, key: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TLSFileError(key, f"{path}: certificate file not found") from None
    except OSError as exc:
        raise TLSFileError(key, f"{path}: {exc.strerror or exc}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSFileError(key, f"{path}: no PEM certificate in it") from None


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_chain(ctx: ssl.SSLContext, certificate: str, private_key: str) -> None:
    _certificates(certificate, "certificate")
    check_private_key(Path(private_key))
    try:
        ctx.load_cert_chain(certificate, private_key)
    except ssl.SSLError as exc:
        raise TLSFileError("private_key", f"{private_key}: not the private key of {certificate} "
                                          f"or not a PEM key ({exc.reason or exc})") from None


def _load_ca(ctx: ssl.SSLContext, path: str, key: str) -> None:
    _certificates(path, key)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSFileError(key, f"{path}: cannot be used as a CA ({exc.reason or exc})") from None


def server_context(tls: ListenTLS) -> ssl.SSLContext:
    """The listener's context: TLS 1.2+, BCP 195 suites, client certificates required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, tls.certificate, tls.private_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, tls.client_ca, "client_ca")
    return ctx


class _PartnerContext(ssl.SSLContext):
    """A partner link's client context: the pins to check, and the last handshake failure."""

    pins: tuple[str, ...] = ()
    failure: tuple[str, str] | None = None

    def fail(self, reason: str, message: str) -> ConnectionError:
        if self.failure is None:
            self.failure = (reason, message)
        return ConnectionError(message)


class _PartnerSocket(ssl.SSLSocket):
    """Records why a handshake failed (pynetdicom only sees that the connection did) and checks
    the pinned fingerprints before a byte of DICOM is sent."""

    def connect(self, address: Any) -> None:
        ctx = cast(_PartnerContext, self.context)
        try:
            super().connect(address)
        except ssl.SSLCertVerificationError as exc:
            raise ctx.fail("tls_certificate", "partner certificate not trusted: "
                           f"{exc.verify_message or exc.reason}") from None
        except ssl.SSLError as exc:
            raise ctx.fail("tls_handshake", f"TLS handshake failed: {_why(exc)}") from None
        if ctx.pins:
            seen = fingerprint(self.getpeercert(binary_form=True) or b"")
            if seen not in ctx.pins:
                self.close()
                raise ctx.fail("tls_certificate", f"partner certificate SHA-256 {seen} is not "
                                                  "a pinned one (partners[].tls.sha256)")

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:  # under TLS 1.3 a refused client certificate shows here
            raise cast(_PartnerContext, self.context).fail(
                "tls_handshake", f"partner ended TLS: {_why(exc)}") from None


_PartnerContext.sslsocket_class = _PartnerSocket


def client_context(tls: PartnerTLS) -> ssl.SSLContext:
    """A context towards a partner: its CA and/or pins, our client certificate if given."""
    ctx = _PartnerContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    if tls.ca is not None:
        _load_ca(ctx, tls.ca, "ca")
        ctx.check_hostname = tls.check_hostname
    else:  # pinned only: the fingerprint check after the handshake is the authentication
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.pins = tls.sha256
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(ctx, tls.certificate, tls.private_key)
    return ctx


def _why(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    return str(exc.reason or type(exc).__name__)


C = TypeVar("C", bound=ssl.SSLContext)


class _Reloading(Generic[C]):
    """A context rebuilt when one of its files changes (checked at each :meth:`current`)."""

    def __init__(self, paths: Sequence[str], build: Callable[[], C], name: str) -> None:
        self._paths, self._build, self._name = tuple(paths), build, name
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._current = build()  # a TLSFileError here stops the start: the caller's to report

    def _stamps(self) -> tuple[tuple[int, ...] | None, ...]:
        stamps: list[tuple[int, ...] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def current(self) -> C:
        stamp = self._stamps()
        if stamp == self._stamp:
            return self._current
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._current = self._build()
                    _log.info("%s: certificate files changed: reloaded", self._name)
                except (TLSFileError, ssl.SSLError, OSError) as exc:
                    _log.error("%s: certificate files changed but do not load (%s); the "
                               "previous ones stay in use", self._name, exc)
            return self._current


class _Dispatch(ssl.SSLContext):
    """What pynetdicom's server holds: wraps each accepted socket with the current context,
    without the handshake (done in the connection's thread by :meth:`ListenerTLS.handshake`)."""

    contexts: _Reloading[ssl.SSLContext]

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return self.contexts.current().wrap_socket(sock, server_side=True,
                                                   do_handshake_on_connect=False)


class ListenerTLS:
    """TLS of the DICOM listener: the context pynetdicom wraps with, the deferred handshake
    and the check of pinned calling AE titles."""

    def __init__(self, tls: ListenTLS, handshake_timeout: float) -> None:
        self._tls = tls
        self._timeout = handshake_timeout
        contexts = _Reloading([tls.certificate, tls.private_key, tls.client_ca],
                              lambda: server_context(tls), "listener TLS")
        dispatch = _Dispatch(ssl.PROTOCOL_TLS_SERVER)
        dispatch.contexts = contexts
        self.ssl_context: ssl.SSLContext = dispatch

    def handshake(self, sock: socket.socket) -> tuple[str, str] | None:
        """Run the server handshake on an accepted socket; ``(reason, detail)`` if it failed."""
        if not isinstance(sock, ssl.SSLSocket):
            return "other", "socket is not wrapped for TLS"
        previous = sock.gettimeout()
        sock.settimeout(self._timeout)
        try:
            sock.do_handshake()
        except ssl.SSLError as exc:
            reason = _OPENSSL_REASONS.get(str(exc.reason), "other")
            if isinstance(exc, ssl.SSLEOFError):
                reason = "closed"
            return reason, _why(exc)
        except TimeoutError:
            return "timeout", f"no TLS handshake within {self._timeout:g} s"
        except OSError as exc:
            return "closed", type(exc).__name__
        sock.settimeout(previous)
        return None

    def caller_problem(self, calling_ae: str, sock: socket.socket) -> str | None:
        """Why a pinned calling AE title may not use this connection's client certificate."""
        pin = self._tls.callers.get(calling_ae)
        if pin is None:
            return None
        if not isinstance(sock, ssl.SSLSocket):
            return "not a TLS connection"
        seen = fingerprint(sock.getpeercert(binary_form=True) or b"")
        subject: Any = (sock.getpeercert() or {}).get("subject", ())
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        if seen in pin.sha256 or any(name in pin.subject_cn for name in names):
            return None
        return (f"client certificate SHA-256 {seen[:16]}... is not one pinned for calling AE "
                f"{calling_ae}")


class PartnerTLSLink:
    """TLS of one delivery link: its own context (so a failure is this link's), rebuilt when a
    file changes, and why the last handshake failed."""

    def __init__(self, tls: PartnerTLS, host: str, name: str) -> None:
        self.server_name = tls.server_name or host
        paths = [p for p in (tls.ca, tls.certificate, tls.private_key) if p is not None]
        self._contexts = _Reloading(paths, lambda: client_context(tls), f"partner {name} TLS")
        self._last: ssl.SSLContext | None = None

    def tls_args(self) -> tuple[ssl.SSLContext, str]:
        """``(context, server name)`` for pynetdicom's ``associate``; clears the last failure."""
        ctx = self._contexts.current()
        cast(_PartnerContext, ctx).failure = None
        self._last = ctx
        return ctx, self.server_name

    def failure(self) -> tuple[str, str] | None:
        """``(reason token, message)`` of the last association's TLS failure, if any."""
        return cast(_PartnerContext, self._last).failure if self._last is not None else None

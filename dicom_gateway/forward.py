"""Forward: a Storage SCU association to one partner, reused across instances.

The only module that knows partners' DIMSE status codes (PS3.4 B.2.3). For each SOP class two
presentation contexts are proposed: one with the instance's own transfer syntax and one with
Explicit/Implicit VR Little Endian, so that a partner which does not accept the original
(e.g. a compressed syntax) still gets the instance, decompressed losslessly. The association is
re-negotiated when an instance needs a context it lacks, and released when idle.

Outcomes: success or warning return normally; :class:`PartnerUnavailable` means retry later
(``scope`` "partner" when the partner could not be reached at all, "instance" when only this
send went wrong), :class:`PartnerRefused` means give up on this instance. With
``partners[].tls`` the association runs over TLS (:mod:`.tls`); a failed handshake is
``tls_certificate`` (the partner's certificate is not the trusted one) or ``tls_handshake``,
and unusable certificate files of our own ``tls_files``: all retried like an unreachable partner.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from .errors import PartnerRefused, PartnerUnavailable, TLSFileError
from .logsafe import quiet_pynetdicom
from .settings import PartnerConfig
from .tls import PartnerTLSLink

__all__ = ["PartnerLink", "classify_status"]

_log = logging.getLogger(__name__)

# Send files without decoding them when the partner accepts their transfer syntax.
_config.STORE_SEND_CHUNKED_DATASET = True
quiet_pynetdicom()

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128  # PS3.8 §9.3.2: at most 128 presentation contexts per association


def classify_status(status: int) -> str:
    """Map a C-STORE response status to ``success``, ``warning``, ``retry`` or ``refused``."""
    if status == 0x0000:
        return "success"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    if 0xA700 <= status <= 0xA7FF or status in (0x0110, 0x0213):  # out of resources, busy
        return "retry"
    return "refused"  # A9xx, Cxxx, 0x0122, 0x0124 ...: this instance will not be taken


class PartnerLink:
    """One association to ``partner`` (a delivery worker owns one link)."""

    def __init__(self, partner: PartnerConfig) -> None:
        self._partner = partner
        self._ae = AE(ae_title=partner.calling_ae_title)
        self._ae.maximum_pdu_size = partner.max_pdu_bytes
        self._ae.acse_timeout = partner.acse_timeout_seconds
        self._ae.dimse_timeout = partner.dimse_timeout_seconds
        self._ae.network_timeout = partner.dimse_timeout_seconds
        self._ae.connection_timeout = partner.connect_timeout_seconds
        self._tls: PartnerTLSLink | None = None
        self._assoc: Association | None = None
        self._wanted: dict[str, set[str]] = {}
        self._last_used = 0.0
        self.associating = False  # an association request is out (read by other workers)

    def send(self, path: Path) -> str:
        """C-STORE the file at ``path``; return ``"success"`` or ``"warning"``."""
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            syntax = str(meta.TransferSyntaxUID)
        except Exception as exc:
            raise PartnerRefused("unreadable", f"cannot read spooled file: {exc}") from None
        context = self._context_for(sop_class, syntax)
        payload: Path | Dataset = path
        if context is None or str(context.transfer_syntax[0]) != syntax:
            payload = self._transcoded(path)
        try:
            assert self._assoc is not None  # _context_for leaves one established
            rsp = self._assoc.send_c_store(payload)
        except Exception as exc:
            self.close(abort=True)
            raise PartnerUnavailable("send_error", f"C-STORE failed: {exc}",
                                     scope="instance") from None
        self._last_used = time.monotonic()
        status = getattr(rsp, "Status", None) if rsp is not None else None
        if status is None:  # DIMSE timeout or abort: the response never came
            self.close(abort=True)
            raise PartnerUnavailable("no_response", "no C-STORE response before timeout",
                                     scope="instance")
        kind = classify_status(int(status))
        comment = str(rsp.get("ErrorComment", "")) if kind != "success" else ""
        if kind == "retry":
            raise PartnerUnavailable("out_of_resources", f"status 0x{status:04X} {comment}",
                                     status=int(status))
        if kind == "refused":
            raise PartnerRefused("refused", f"status 0x{status:04X} {comment}", status=int(status))
        return kind

    @property
    def connected(self) -> bool:
        """An association is established (read by the partner's other workers)."""
        assoc = self._assoc
        return assoc is not None and bool(assoc.is_established)

    def release_if_idle(self) -> None:
        if (self._assoc is not None
                and time.monotonic() - self._last_used > self._partner.idle_release_seconds):
            self.close()

    def close(self, abort: bool = False) -> None:
        if self._assoc is None:
            return
        try:
            if self._assoc.is_established:
                self._assoc.abort() if abort else self._assoc.release()
        except Exception:  # pragma: no cover - tearing down a broken association
            pass
        self._assoc = None

    def _context_for(self, sop_class: str, syntax: str) -> PresentationContext:
        """Return an accepted context for the instance, negotiating a new association if needed."""
        ctx = self._find(sop_class, syntax)
        if ctx is not None:
            return ctx
        wanted = self._wanted.setdefault(sop_class, set())
        if syntax in wanted and self._assoc is not None:
            raise PartnerRefused("no_context",
                                 f"partner accepts no transfer syntax for {sop_class}")
        wanted.add(syntax)
        self._wanted[sop_class] = self._wanted.pop(sop_class)  # most recently needed last
        self.close()
        self._associate()
        ctx = self._find(sop_class, syntax)
        if ctx is None:
            raise PartnerRefused("no_context", f"partner accepts neither {syntax} nor little "
                                 f"endian for {sop_class}")
        return ctx

    def _find(self, sop_class: str, syntax: str) -> PresentationContext | None:
        if self._assoc is None or not self._assoc.is_established:
            self._assoc = None
            return None
        fallback = None
        for cx in self._assoc.accepted_contexts:
            if cx.abstract_syntax != sop_class:
                continue
            if cx.transfer_syntax[0] == syntax:
                return cx
            if cx.transfer_syntax[0] in _UNCOMPRESSED:
                fallback = cx
        return fallback

    def _associate(self) -> None:
        contexts: list[PresentationContext] = []
        for sop_class, syntaxes in reversed(self._wanted.items()):  # newest first
            # the instance's own syntax alone (so it can go as stored), then the fallback
            wanted = [build_context(sop_class, [s]) for s in sorted(syntaxes)]
            wanted.append(build_context(sop_class, list(_UNCOMPRESSED)))
            if len(contexts) + len(wanted) > _MAX_CONTEXTS:
                break
            contexts.extend(wanted)
        p = self._partner
        connected: list[bool] = []  # pynetdicom reports a refused TCP connect as an abort
        tls_args = self._tls_args()
        self.associating = True
        try:
            assoc = self._ae.associate(
                p.host, p.port, ae_title=p.ae_title, contexts=contexts, tls_args=tls_args,
                evt_handlers=[(evt.EVT_CONN_OPEN, lambda e: connected.append(True))])
        except Exception as exc:  # socket errors surface here on some pynetdicom paths
            raise PartnerUnavailable("connection_failed", str(exc)) from None
        finally:
            self.associating = False
        if not assoc.is_established:
            where = f"{p.ae_title}@{p.host}:{p.port}"
            failure = self._tls.failure() if self._tls is not None else None
            if failure is not None:
                raise PartnerUnavailable(failure[0], f"{failure[1]} ({where})")
            reason = "connection_failed" if not connected else (
                "association_rejected" if assoc.is_rejected else "association_aborted")
            raise PartnerUnavailable(reason, f"cannot associate with {where}")
        sock = assoc.dul.socket
        # pynetdicom never sets TCP_NODELAY; without it ~45 ms/instance
        if sock is not None and sock.socket is not None:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._assoc = assoc
        self._last_used = time.monotonic()

    def _tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        """The TLS context for the next association (None: plain TCP); files that do not load
        (since the configuration was checked) fail the attempt as ``tls_files``."""
        tls = self._partner.tls
        if tls is None:
            return None
        try:
            if self._tls is None:
                self._tls = PartnerTLSLink(tls, self._partner.host, self._partner.name)
            return self._tls.tls_args()
        except TLSFileError as exc:
            raise PartnerUnavailable("tls_files", str(exc)) from None

    @staticmethod
    def _transcoded(path: Path) -> Dataset:
        """Decode and re-encode as Explicit VR Little Endian (lossless: pixels are decoded)."""
        try:
            ds = dcmread(path)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)  # same instance, decoded losslessly
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        except Exception as exc:
            raise PartnerRefused("transcode_failed",
                                 f"cannot decompress for the partner: {exc}") from None
        return ds

"""Forward: a Storage SCU association to one partner, reused across instances.

The only module that knows partners' DIMSE status codes (PS3.4 B.2.3).

Transfer syntax (decision ``docs/decisions/0024-send-as-received.md``): an instance leaves as it is
stored, i.e. in the syntax it arrived in (pass-through: the received bytes) or in Explicit VR
Little Endian (protected output, decision 0007), whenever the partner accepts that syntax. For each
SOP class the association proposes one presentation context per transfer syntax seen and per
uncompressed fallback syntax (Explicit, Implicit VR Little Endian), each with that syntax alone, so
that the partner accepts or rejects each on its own. "Seen" means: the instance being sent, the
next instances queued for the partner (``upcoming``) and those sent earlier on this link. The
instance goes on the accepted context with exactly its syntax, its file bytes unchanged
(pynetdicom's chunked send, no decoding). An instance whose SOP class and syntax were not proposed
on the open association makes the link re-negotiate (release, then associate with it added), never
fall back.

Only when the partner rejected the instance's own syntax on this association is it re-encoded,
the documented fallback: a compressed instance is decompressed (pixel values as decoded, UIDs
unchanged) to Explicit VR Little Endian, an uncompressed one keeps its data set, and pynetdicom
encodes either in the uncompressed syntax the partner accepted (explicit <-> implicit VR). It is
counted in ``reencoded_instances_total{original, sent}`` and logged once per association. A
partner that accepts neither the syntax nor one it can be converted to is ``no_context``.
Beyond 128 contexts (PS3.8 9.3.2) the classes that do not fit, oldest first, are left out of
the proposal; an instance of such a class re-negotiates when its turn comes.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from .errors import PartnerRefused, PartnerUnavailable, TLSFileError
from .logsafe import quiet_pynetdicom
from .reactor_guard import guard
from .settings import PartnerConfig
from .tls import PartnerTLSLink

__all__ = ["PartnerLink", "Sent", "classify_status", "syntax_label"]

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


def syntax_label(syntax: str) -> str:
    """A transfer syntax as a metric label: its keyword in the DICOM standard (a fixed set, e.g.
    ``JPEGLSLossless``), ``other`` for anything else (a private syntax: never a UID)."""
    uid = UID(syntax)
    return uid.keyword if uid.is_transfer_syntax and uid.keyword else "other"


@dataclass(frozen=True)
class Sent:
    """What :meth:`PartnerLink.send` did: the partner's ``result`` (``success``, ``warning``)
    and, only when the instance left re-encoded (the fallback), the :func:`syntax_label` of the
    syntax it was stored in and of the one it was sent in."""

    result: str
    reencoded: tuple[str, str] | None = None


class PartnerLink:
    """One association to ``partner`` (a delivery worker owns one link).

    ``upcoming`` returns the files queued next for the partner; their SOP classes and transfer
    syntaxes are proposed too when an association is opened, so that a mixed batch does not
    re-negotiate instance by instance.
    """

    def __init__(self, partner: PartnerConfig,
                 upcoming: Callable[[], Iterable[Path]] | None = None) -> None:
        self._partner = partner
        self._upcoming = upcoming
        self._ae = AE(ae_title=partner.calling_ae_title)
        self._ae.maximum_pdu_size = partner.max_pdu_bytes
        self._ae.acse_timeout = partner.acse_timeout_seconds
        self._ae.dimse_timeout = partner.dimse_timeout_seconds
        self._ae.network_timeout = partner.dimse_timeout_seconds
        self._ae.connection_timeout = partner.connect_timeout_seconds
        self._tls: PartnerTLSLink | None = None
        self._assoc: Association | None = None
        # SOP class -> transfer syntaxes seen on this link (ordered); most recently needed last
        self._seen: dict[str, dict[str, None]] = {}
        self._proposed: set[tuple[str, str]] = set()  # (class, syntax) alone on the open assoc.
        self._fallback_noted: set[tuple[str, str]] = set()  # logged on the open association
        self._last_used = 0.0
        self.associating = False  # an association request is out (read by other workers)

    def send(self, path: Path) -> Sent:
        """C-STORE the file at ``path`` (as stored whenever the partner accepts its syntax)."""
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            syntax = str(meta.TransferSyntaxUID)
        except Exception as exc:
            raise PartnerRefused("unreadable", f"cannot read spooled file: {exc}") from None
        payload, reencoded = self._payload(path, sop_class, syntax)
        try:
            assert self._assoc is not None  # _payload leaves one established
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
        return Sent(kind, reencoded)

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
        self._proposed = set()
        self._fallback_noted = set()
        if self._assoc is None:
            return
        try:
            if self._assoc.is_established:
                self._assoc.abort() if abort else self._assoc.release()
        except Exception:  # pragma: no cover - tearing down a broken association
            pass
        self._assoc = None

    # -- presentation contexts ----------------------------------------------------------------
    def _payload(self, path: Path, sop_class: str,
                 syntax: str) -> tuple[Path | Dataset, tuple[str, str] | None]:
        """What to hand pynetdicom for this instance, on an association that has been offered
        its SOP class and syntax (re-negotiated if it had not): the file itself when the partner
        accepted the syntax, else the re-encoded data set and (original, sent) labels."""
        if not self.connected or (sop_class, syntax) not in self._proposed:
            self._learn(sop_class, syntax)
            self.close()
            self._associate(sop_class)
        assoc = self._assoc
        assert assoc is not None
        if any(cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
               for cx in assoc.accepted_contexts):
            return path, None
        # the partner rejected this syntax for this class on this association: the fallback
        source = UID(syntax)
        wanted = ExplicitVRLittleEndian if source.is_compressed or source.is_deflated else source
        try:  # the context send_c_store will choose for the re-encoded data set (same call)
            context = assoc._get_valid_context(sop_class, wanted, "scu")
        except ValueError:
            raise PartnerRefused(
                "no_context", f"partner accepts neither {source.name} nor a syntax it can be "
                f"re-encoded in for {UID(sop_class).name}") from None
        sent = str(context.transfer_syntax[0])
        if (sop_class, syntax) not in self._fallback_noted:
            self._fallback_noted.add((sop_class, syntax))
            _log.warning("%s does not accept %s for %s: such instances are re-encoded as %s "
                         "(decision 0024)", self._partner.name, source.name,
                         UID(sop_class).name, UID(sent).name)
        return self._reencoded(path), (syntax_label(syntax), syntax_label(sent))

    def _learn(self, sop_class: str, syntax: str) -> None:
        syntaxes = self._seen.pop(sop_class, {})
        syntaxes[syntax] = None
        self._seen[sop_class] = syntaxes  # most recently needed last

    def _contexts(self, first: str) -> list[PresentationContext]:
        """Per SOP class (``first``, then those queued next, then the others newest first), one
        context per syntax seen and per uncompressed fallback syntax, each alone; classes that
        would pass 128 contexts are left out. Records what was proposed in ``_proposed``."""
        upcoming: list[str] = []
        for path in self._upcoming() if self._upcoming is not None else ():
            try:
                meta = read_file_meta_info(path)
                sop_class = str(meta.MediaStorageSOPClassUID)
                syntax = str(meta.TransferSyntaxUID)
            except Exception:  # gone meanwhile, or unreadable: send() will say so
                continue
            self._seen.setdefault(sop_class, {})[syntax] = None
            upcoming.append(sop_class)
        order = dict.fromkeys([first, *upcoming, *reversed(self._seen)])
        contexts: list[PresentationContext] = []
        for sop_class in order:
            # each alone: an acceptor picks the syntax of a shared context from its own
            # preference list (pynetdicom's starts with implicit VR), hiding explicit VR
            syntaxes = list(dict.fromkeys([*self._seen[sop_class], *_UNCOMPRESSED]))
            group = [build_context(sop_class, [s]) for s in syntaxes]
            if len(contexts) + len(group) > _MAX_CONTEXTS:
                continue  # proposed when an instance of this class needs it
            contexts.extend(group)
            self._proposed.update((sop_class, s) for s in syntaxes)
        return contexts

    def _associate(self, first: str) -> None:
        contexts = self._contexts(first)
        p = self._partner
        connected: list[bool] = []  # pynetdicom reports a refused TCP connect as an abort
        tls_args = self._tls_args()
        self.associating = True
        try:
            assoc = self._ae.associate(
                p.host, p.port, ae_title=p.ae_title, contexts=contexts, tls_args=tls_args,
                evt_handlers=[(evt.EVT_CONN_OPEN, lambda e: connected.append(True))])
        except Exception as exc:  # socket errors surface here on some pynetdicom paths
            self._proposed = set()
            raise PartnerUnavailable("connection_failed", str(exc)) from None
        finally:
            self.associating = False
        if not assoc.is_established:
            self._proposed = set()
            where = f"{p.ae_title}@{p.host}:{p.port}"
            failure = self._tls.failure() if self._tls is not None else None
            if failure is not None:
                raise PartnerUnavailable(failure[0], f"{failure[1]} ({where})")
            reason = "connection_failed" if not connected else (
                "association_rejected" if assoc.is_rejected else "association_aborted")
            raise PartnerUnavailable(reason, f"cannot associate with {where}")
        guard(assoc)  # a response pynetdicom's reactor takes by mistake goes to its request
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
    def _reencoded(path: Path) -> Dataset:
        """The instance as a data set pynetdicom re-encodes for the accepted uncompressed
        context: a compressed one decompressed (Explicit VR Little Endian, the same instance
        UID), a deflated one inflated, an uncompressed one as read."""
        try:
            ds = dcmread(path)
            source = ds.file_meta.TransferSyntaxUID
            if source.is_compressed:
                ds.decompress(generate_instance_uid=False)  # same instance, decoded
            elif source.is_deflated:  # dcmread inflated it
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        except Exception as exc:
            raise PartnerRefused("transcode_failed",
                                 f"cannot decompress for the partner: {exc}") from None
        return ds

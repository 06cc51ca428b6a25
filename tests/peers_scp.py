"""In-process pynetdicom Storage SCP that records what it receives (and can misbehave)."""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from peers_base import LOCALHOST, free_port, pixel_sha256_of
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["RecordingSCP"]


def _is_stored(status: int) -> bool:
    return status in (0x0000, 0x0001) or status & 0xF000 == 0xB000


class RecordingSCP:
    """In-process pynetdicom Storage SCP on 127.0.0.1 recording every stored instance.

    Parameters
    ----------
    ae_title : str
        AE title of the SCP (called AE titles are not checked).
    port : int, optional
        Listening port; a free one by default.  Kept across ``stop()``/``start()``.
    status : int
        C-STORE status answered to every request.  Only success/warning statuses
        record the instance; failures only bump :attr:`attempts`.  May be changed
        while running, as may ``delay_seconds``.
    delay_seconds : float
        Sleep before answering each C-STORE.
    accept_transfer_syntaxes : list of str, optional
        Restrict the accepted transfer syntaxes (default: all known to pynetdicom).
    store_dir : Path, optional
        Write each received instance there as ``<SOPInstanceUID>.dcm`` (as received).
    hash_pixels : bool
        Decode and hash the pixels of each instance on receipt (None if undecodable).
    ssl_context : ssl.SSLContext, optional
        Serve DICOM over TLS with this (server) context; plain TCP by default.
    """

    def __init__(
        self,
        ae_title: str = "RECORDER",
        *,
        port: int | None = None,
        status: int = 0x0000,
        delay_seconds: float = 0.0,
        accept_transfer_syntaxes: Sequence[str] | None = None,
        store_dir: Path | None = None,
        hash_pixels: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.port = port or free_port()
        self.status = status
        self.delay_seconds = delay_seconds
        self.accept_transfer_syntaxes = list(accept_transfer_syntaxes or ALL_TRANSFER_SYNTAXES)
        self.store_dir = store_dir
        self.hash_pixels = hash_pixels
        self.ssl_context = ssl_context
        self._cond = threading.Condition()
        self._server: ThreadedAssociationServer | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._cond:
            self._received: list[tuple[str, str]] = []
            self._counts: Counter[str] = Counter()
            self._hashes: dict[str, str | None] = {}
            self._callers: dict[str, set[str]] = {}
            self._connections = 0
            self._attempts = 0

    def start(self) -> Self:
        """Start listening (non-blocking); restartable on the same port."""
        if self._server is not None:
            return self
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(self.ae_title)
        ae.maximum_pdu_size = 0
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax:
                ae.add_supported_context(context.abstract_syntax, self.accept_transfer_syntaxes)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
        ]
        self._server = ae.start_server((LOCALHOST, self.port), block=False, evt_handlers=handlers,
                                       ssl_context=self.ssl_context)
        return self

    def stop(self) -> None:
        """Abort open associations and close the listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        for assoc in list(server.active_associations):
            assoc.abort()
        server.shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _on_conn_open(self, event: evt.Event) -> None:
        with self._cond:
            self._connections += 1

    def _on_store(self, event: evt.Event) -> int:
        with self._cond:
            self._attempts += 1
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)
        status = self.status
        if not _is_stored(status):
            return status
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        digest: str | None = None
        if self.hash_pixels:
            ds = event.dataset
            ds.file_meta = event.file_meta
            try:
                digest = pixel_sha256_of(ds)
            except Exception:
                digest = None
        if self.store_dir is not None:
            (self.store_dir / f"{sop_uid}.dcm").write_bytes(event.encoded_dataset())
        with self._cond:
            self._received.append((sop_uid, str(event.context.transfer_syntax)))
            self._counts[sop_uid] += 1
            self._hashes[sop_uid] = digest
            self._callers.setdefault(sop_uid, set()).add(event.assoc.requestor.ae_title.strip())
            self._cond.notify_all()
        return status

    def wait_for_count(self, n: int, timeout: float = 10.0) -> int:
        """Wait until at least ``n`` instances were stored; return the count reached.

        Instances are recorded just *before* the C-STORE-RSP is sent, so the
        sender's own bookkeeping (metrics, spool) may lag slightly behind.
        """
        with self._cond:
            self._cond.wait_for(lambda: len(self._received) >= n, timeout=timeout)
            return len(self._received)

    @property
    def received(self) -> list[tuple[str, str]]:
        """``(SOPInstanceUID, transfer syntax UID)`` per stored instance, arrival order."""
        with self._cond:
            return list(self._received)

    @property
    def open_associations(self) -> int:
        """Associations currently established with this SCP."""
        server = self._server
        return 0 if server is None else len(server.active_associations)

    @property
    def received_sops(self) -> set[str]:
        with self._cond:
            return set(self._counts)

    @property
    def sop_counts(self) -> Counter[str]:
        with self._cond:
            return Counter(self._counts)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first one of each SOP instance."""
        with self._cond:
            return sum(count - 1 for count in self._counts.values())

    @property
    def callers(self) -> dict[str, set[str]]:
        """The calling AE titles each instance was stored by."""
        with self._cond:
            return {sop: set(aes) for sop, aes in self._callers.items()}

    @property
    def pixel_hashes(self) -> dict[str, str | None]:
        """SOPInstanceUID -> :func:`pixel_sha256_of` of the last delivery."""
        with self._cond:
            return dict(self._hashes)

    @property
    def connection_count(self) -> int:
        """TCP connections opened to this SCP (EVT_CONN_OPEN)."""
        with self._cond:
            return self._connections

    @property
    def attempts(self) -> int:
        """C-STORE requests received, whatever status was answered."""
        with self._cond:
            return self._attempts

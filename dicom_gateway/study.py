"""Study assembly: hold a study in the inbox until it has been quiet, then release it.

Instances are grouped by Study Instance UID (the inbox directory). A study is released when no
instance of it arrived for ``study_stable_seconds`` (Orthanc's StableAge, mercure's timeouts).
Late instances of a released study start a new quiet period and are released in turn. After a
restart every study in the inbox starts a full quiet period: a half-received study is never
released early because the gateway was down (decision 0005). The inbox is also rescanned every
``rescan_seconds``, so instances put back by ``dicom-gateway spool retry --state quarantine``
while the gateway runs are released like new arrivals.

An instance whose every destination's profile says ``release: instance`` (the default for a
method that reads no other instance: ``none``, ``adversarial_perturbation``,
``adversarial_watermark``; decision 0028) does not wait: the receiver says so, and the
assembler hands the study to ``stream`` at once, which processes just those instances. What
arrived meanwhile is taken in the same pass, so a fast sender's instances go in small batches.
Such a study still gets its quiet period: the release at its end finds the inbox empty (or
holds what did not stream) and removes the study's directories.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .metrics import Metrics
from .priority import run_in_background
from .spool import Spool

__all__ = ["StudyAssembler"]

_log = logging.getLogger(__name__)


class StudyAssembler:
    """Tracks the last arrival per study and calls ``release(study_key)`` when it is stable."""

    def __init__(self, spool: Spool, stable_seconds: float, release: Callable[[str], None],
                 metrics: Metrics, rescan_seconds: float = 5.0,
                 stream: Callable[[str], None] | None = None) -> None:
        self._spool = spool
        self._stable = stable_seconds
        self._rescan = rescan_seconds
        self._next_rescan = 0.0
        self._release = release
        self._stream = stream
        self._metrics = metrics
        self._last: dict[str, float] = {}
        self._streaming: dict[str, None] = {}  # studies with instances to stream, in order
        self._busy = False  # a release or a stream pass is running
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        metrics.open_studies.set_function(lambda: len(self._last))

    def note_arrival(self, study: str, stream: bool = False) -> None:
        """An instance of ``study`` was committed to the inbox (called by the receiver);
        ``stream``: it need not wait for the study to be quiet (``release: instance``)."""
        with self._cond:
            self._last[study] = time.monotonic()
            if stream and self._stream is not None:
                self._streaming[study] = None
            self._cond.notify()

    def start(self) -> None:
        for study in self._spool.inbox_studies():  # recovery: everything waits a full period
            if self._spool.inbox_entries(study):
                self.note_arrival(study)
            else:
                self._spool.remove_empty_study(study)
        self._next_rescan = time.monotonic() + self._rescan  # that was the first rescan
        self._thread = threading.Thread(target=self._run, name="assembler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def streaming(self) -> bool:
        """Whether instances wait to be streamed, or a pass over a study is running."""
        with self._cond:
            return bool(self._streaming) or self._busy

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _due(self) -> tuple[list[str], float]:
        now = time.monotonic()
        due = [s for s, t in self._last.items() if now - t >= self._stable]
        waits = [self._stable - (now - t) for s, t in self._last.items() if s not in due]
        return due, min(waits, default=1.0)

    def _rescan_inbox(self) -> None:
        """Note studies with inbox entries that nothing announced (an operator's requeue)."""
        self._next_rescan = time.monotonic() + self._rescan
        with self._cond:
            known = set(self._last)
        try:
            studies = [s for s in self._spool.inbox_studies() if s not in known
                       and self._spool.inbox_entries(s)]
        except OSError as exc:
            _log.warning("inbox rescan failed: %s", exc)
            return
        for study in studies:
            _log.info("found study=%s in the inbox (requeued); it waits a quiet period", study)
            self.note_arrival(study)

    def _run(self) -> None:
        run_in_background()  # receiving comes first: protection and sealing use what is left
        while True:
            if time.monotonic() >= self._next_rescan:
                self._rescan_inbox()
            with self._cond:
                if self._stopping:
                    return
                due, wait = self._due()
                streaming = [s for s in self._streaming if s not in due]
                self._streaming.clear()
                if not due and not streaming:
                    until_rescan = self._next_rescan - time.monotonic()
                    self._cond.wait(timeout=max(0.01, min(wait, until_rescan, 1.0)))
                    continue
                for study in due:
                    del self._last[study]
                self._busy = True
            try:
                self._pass(streaming, due)
            finally:
                with self._cond:
                    self._busy = False

    def _pass(self, streaming: list[str], due: list[str]) -> None:
        """Stream the instances of ``streaming``, then release the ``due`` studies."""
        for study in streaming:
            if self._stopping:
                return
            assert self._stream is not None
            try:
                self._stream(study)
            except Exception:  # what did not stream waits for the study's quiet release
                _log.exception("streaming study %s failed; its instances wait for the "
                               "study to be quiet", study)
        for study in due:
            if self._stopping:
                return
            try:
                self._release(study)
                self._metrics.studies_released.inc()
            except Exception:  # keep the study in the inbox, try again after a quiet period
                _log.exception("processing study %s failed; will retry", study)
                self.note_arrival(study)

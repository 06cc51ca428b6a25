"""Study worker: turns a released study into outbox entries, series by series.

For each series and each protection profile the study's instances are protected as one batch;
the result is written once and hard-linked into the outbox of every partner using that profile.
An instance that cannot be protected is quarantined for that partner (fail closed) unless the
profile says ``on_unprotectable: forward``. Only after all its outbox and quarantine entries are
committed is an instance removed from ``work/``: a crash in between re-processes it (a possible
duplicate delivery, never a loss).

On a profile that de-identifies (``deidentify``, decision 0018), an instance whose pixels may
show identifiers is quarantined before protection; the rest are protected once, and each
partner's copy is de-identified with that partner's keys (header only: no protection method
reads what de-identification changes), then sealed from the de-identified original, so the
order is de-identify, protect, seal. Any failure there quarantines (``deid_failed``). On a
profile with ``deidentify.escrow`` the copy that leaves carries the re-identification escrow
(decision 0021).

Each step is recorded in the audit trail (decision 0020) before its file is committed:
``protected``, ``deidentified``, ``sealed`` or ``prepared`` (an unsealed copy), ``quarantined``.
A record that cannot be written raises: the study goes back to the inbox, nothing more of it
leaves until the trail takes records again (fail closed).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from .audit import AuditTrail
from .audit.events import ids, manifest_sha256, outgoing, parameters_sha256
from .deid.service import DeidService
from .errors import InstanceError, SealError
from .metrics import Metrics
from .protect import Outcome, StudyContext
from .records import RoutingRecord, SetAsideReason
from .seal.service import SealService
from .settings import releases_per_instance
from .spool import Entry, Spool
from .stage import ProtectionStage, study_context

__all__ = ["StudyWorker"]

_log = logging.getLogger(__name__)


class StudyWorker:
    """Processes one released study (called by the assembler's thread)."""

    def __init__(self, spool: Spool, stage: ProtectionStage, metrics: Metrics,
                 enqueue: Callable[[str, Entry], None], sealer: SealService | None = None,
                 deid: DeidService | None = None, audit: AuditTrail | None = None) -> None:
        self._audit = audit
        self._sealer = sealer
        self._deid = deid
        self._spool = spool
        self._stage = stage
        self._metrics = metrics
        self._enqueue = enqueue
        self._pending: dict[Path, list[tuple[str, Entry]]] = {}
        self._stream_answers: dict[str, bool] = {}  # routing record name -> streams

    def __call__(self, study: str) -> None:
        """Process every instance of ``study`` in the inbox (the study has been quiet)."""
        claimed = self._spool.claim(self._spool.inbox_entries(study))
        if not claimed:
            self._spool.remove_empty_study(study)
            return
        self._run(study, claimed, streamed=False)

    def stream(self, study: str) -> None:
        """Process the instances of ``study`` in the inbox whose every destination releases
        per instance (``release: instance``, decision 0028); the others wait for the study to
        be quiet. The study's directories stay for its next instances: the quiet release
        removes them."""
        claimed = self._spool.claim([e for e in self._spool.inbox_entries(study)
                                     if self._streams(e)])
        if claimed:
            self._run(study, claimed, streamed=True)
            self._metrics.streamed_instances.inc(len(claimed))

    def _streams(self, entry: Entry) -> bool:
        """Whether every destination of ``entry`` releases per instance (a routing record is
        named by a hash of its content, so its answer is kept by name)."""
        name = entry.record_path.name
        answer = self._stream_answers.get(name)
        if answer is None:
            record = self._spool.record(entry)  # missing: the quiet release quarantines it
            answer = record is not None and bool(record.destinations) and releases_per_instance(
                self._stage.profiles, (d.profile for d in record.destinations))
            if len(self._stream_answers) >= 4096:
                self._stream_answers.clear()
            self._stream_answers[name] = answer
        return answer

    def _run(self, study: str, claimed: list[Entry], streamed: bool) -> None:
        try:
            self._process(study, claimed, streamed)
        except Exception:
            for entry in claimed:  # back to the inbox: the assembler retries after a quiet period
                self._spool.unclaim(entry)
            self._pending.clear()
            raise

    def _process(self, study: str, claimed: list[Entry], streamed: bool = False) -> None:
        # series -> profile -> [(entry, partners)]
        batches: dict[str, dict[str, list[tuple[Entry, list[str]]]]] = defaultdict(
            lambda: defaultdict(list))
        records: dict[Path, RoutingRecord | None] = {}  # one read per shared routing record
        for entry in claimed:
            if entry.record_path not in records:
                records[entry.record_path] = self._spool.record(entry)
            record = records[entry.record_path]
            if record is None or not record.destinations:  # never drop silently: keep it
                self._spool.quarantine(entry, "_inbox", SetAsideReason(
                    "missing_route_record", "no readable routing record beside it"))
                self._note("quarantined", entry, partner="_inbox", profile=None,
                           reason="missing_route_record")
                self._metrics.quarantined.labels(partner="_inbox",
                                                 reason="missing_route_record").inc()
                continue
            partners_of: dict[str, list[str]] = defaultdict(list)
            for d in record.destinations:
                partners_of[d.profile].append(d.partner)
            for profile, names in partners_of.items():
                batches[record.series][profile].append((entry, names))
        touched: set[str] = set()
        context: StudyContext | None = None  # read once, when a profile protects pixels
        for by_profile in batches.values():  # series by series: one batch per (series, profile)
            for profile, all_items in by_profile.items():
                items = self._screened(profile, all_items)
                if not items:
                    continue
                method = self._stage.profile(profile).method
                self._metrics.protect_batch_size.labels(method=method).observe(len(items))
                if context is None and method != "none":
                    context = study_context(e.path for e in claimed)
                outcomes = self._stage.protect(profile, [e.path for e, _ in items],
                                               study=context)
                for (entry, partners), outcome in zip(items, outcomes, strict=True):
                    self._hand_on(study, entry, partners, profile, outcome)
                    touched.update(partners)
        for partner in touched:
            self._spool.sync_outbox(partner)
        for entry in claimed:
            self._spool.finish_work(entry)
            for partner, out in self._pending.pop(entry.path, []):
                self._enqueue(partner, out)
        if streamed:
            _log.debug("streamed study=%s instances=%d partners=%s", study, len(claimed),
                       ",".join(sorted(touched)))
            return
        self._spool.remove_empty_study(study)
        _log.info("released study=%s instances=%d partners=%s", study, len(claimed),
                  ",".join(sorted(touched)))

    def _hand_on(self, study: str, entry: Entry, partners: list[str], profile: str,
                 outcome: Outcome) -> None:
        output = outcome.output
        if outcome.error is not None:
            if self._stage.profile(profile).on_unprotectable == "forward":
                _log.warning("forwarding UNPROTECTED sop=%s (on_unprotectable: forward): %s",
                             entry.name, outcome.error)
                output = entry.path
            else:
                for partner in partners:
                    self._spool.quarantine(entry, partner, SetAsideReason(
                        outcome.error.reason, str(outcome.error), profile=profile))
                    self._metrics.quarantined.labels(partner=partner,
                                                     reason=outcome.error.reason).inc()
                    self._note("quarantined", entry, partner=partner, profile=profile,
                               reason=outcome.error.reason)
                _log.warning("quarantined sop=%s for %s: %s", entry.name, ",".join(partners),
                             outcome.error)
                return
        assert output is not None
        method = self._stage.profile(profile).method
        if method != "none" and outcome.error is None:  # protected: sealed per partner
            self._note("protected", entry, profile=profile, method=method,
                       parameters_sha256=parameters_sha256(outcome.parameters))
            read: list[tuple[Dataset, Dataset]] = []  # on a de-identifying profile: once
            for partner in partners:
                self._seal_for(study, entry, partner, profile, outcome, read)
            return
        if self._stage.profile(profile).deidentify is not None:
            self._deidentified(study, entry, partners, profile, output)
            return
        staged = self._spool.stage_output(output)
        try:
            for partner in partners:
                self._note("prepared", entry, partner=partner, profile=profile, method=method,
                           protected=False, out=None)
                out = self._spool.commit_outbox(partner, f"{study}_{entry.sop_key}",
                                                self._spool.stage_output(staged))
                self._pending.setdefault(entry.path, []).append((partner, out))
        finally:
            staged.unlink(missing_ok=True)

    def _seal_for(self, study: str, entry: Entry, partner: str, profile: str,
                  outcome: Outcome, read: list[tuple[Dataset, Dataset]]) -> None:
        """Seal ``outcome`` for ``partner`` (de-identified first on a de-identifying profile:
        the received and the protected instance are read into ``read`` for the first partner
        and copied from there for each, as de-identification never changes its input)."""
        assert outcome.output is not None
        method = self._stage.profile(profile).method
        started = time.perf_counter()
        source: Path | Dataset = entry.path
        protected: Path | Dataset = outcome.output
        reason = "deid_failed"
        try:
            if self._stage.profile(profile).deidentify is not None:  # de-identify, then seal
                if not read:
                    read.append((dcmread(entry.path), protected if isinstance(
                        protected, Dataset) else dcmread(protected)))
                source = self._deidentify(profile, partner, read[0][0], escrow=False)
                protected = self._deidentify(profile, partner, read[0][1])
            reason = "seal_failed"
            if self._sealer is None or not self._sealer.has_partner(partner):
                raise SealError("no_key", f"no seal key for partner {partner!r}")
            sealed = self._sealer.seal(partner, source, protected, outcome.residual,
                                       method, dict(outcome.parameters))
        except Exception as exc:  # never let protected pixels leave unsealed: quarantine
            self._set_aside(entry, partner, profile, InstanceError(
                reason, f"{type(exc).__name__}: {exc}"))
            return
        self._metrics.seal_seconds.labels(partner=partner).observe(time.perf_counter() - started)
        if isinstance(source, Dataset):
            self._deid_note(entry, partner, profile, source)
        self._note("sealed", entry, partner=partner, profile=profile, method=method,
                   manifest_sha256=manifest_sha256(sealed), out=outgoing(sealed))
        staged = self._spool.stage_output(sealed)
        out = self._spool.commit_outbox(partner, f"{study}_{entry.sop_key}", staged)
        self._pending.setdefault(entry.path, []).append((partner, out))

    # -- de-identification (decision 0018) ----------------------------------------------------
    def _deidentify(self, profile: str, partner: str, ds: Dataset, escrow: bool = True
                    ) -> Dataset:
        """``ds`` de-identified for ``partner``; ``escrow``: a copy that leaves carries the
        profile's re-identification escrow (decision 0021), the seal's source does not."""
        if self._deid is None:
            raise InstanceError("deid_failed", "the gateway has no de-identification keys")
        return self._deid.deidentify(profile, partner, ds, escrow)

    def _set_aside(self, entry: Entry, partner: str, profile: str, error: InstanceError) -> None:
        """Quarantine ``entry`` for ``partner``; the log names the reason token only (the
        message may quote a header value)."""
        self._spool.quarantine(entry, partner, SetAsideReason(error.reason, str(error),
                                                              profile=profile))
        self._metrics.quarantined.labels(partner=partner, reason=error.reason).inc()
        self._note("quarantined", entry, partner=partner, profile=profile, reason=error.reason)
        _log.warning("quarantined sop=%s for %s: %s", entry.name, partner, error.reason)

    def _screened(self, profile: str, items: list[tuple[Entry, list[str]]]
                  ) -> list[tuple[Entry, list[str]]]:
        """``items`` less those whose pixels may show identifiers on a de-identifying profile
        (quarantined with the rule's reason for each of their partners, never protected)."""
        if self._stage.profile(profile).deidentify is None:
            return items
        kept = []
        for entry, partners in items:
            problem: InstanceError | None
            try:
                head = dcmread(entry.path, stop_before_pixels=True)
                problem = (self._deid.screen(profile, head) if self._deid is not None else
                           InstanceError("deid_failed", "the gateway has no de-identification "
                                         "keys"))
            except Exception as exc:  # unreadable: it cannot be de-identified either
                problem = InstanceError("deid_failed", f"{type(exc).__name__}: {exc}")
            if problem is None:
                kept.append((entry, partners))
                continue
            for partner in partners:
                self._set_aside(entry, partner, profile, problem)
        return kept

    def _deidentified(self, study: str, entry: Entry, partners: list[str], profile: str,
                      output: Path | Dataset) -> None:
        """A de-identified copy per partner into its outbox (a route that does not seal)."""
        try:
            ds = output if isinstance(output, Dataset) else dcmread(output)
        except Exception as exc:
            for partner in partners:
                self._set_aside(entry, partner, profile, InstanceError(
                    "deid_failed", f"{type(exc).__name__}: {exc}"))
            return
        for partner in partners:
            try:
                copy = self._deidentify(profile, partner, ds)
            except Exception as exc:  # never send a header that is not de-identified
                self._set_aside(entry, partner, profile, InstanceError(
                    "deid_failed", f"{type(exc).__name__}: {exc}"))
                continue
            self._deid_note(entry, partner, profile, copy)
            self._note("prepared", entry, partner=partner, profile=profile,
                       method=self._stage.profile(profile).method, protected=False,
                       out=outgoing(copy))
            out = self._spool.commit_outbox(partner, f"{study}_{entry.sop_key}",
                                            self._spool.stage_output(copy))
            self._pending.setdefault(entry.path, []).append((partner, out))

    # -- the audit trail (decision 0020) ------------------------------------------------------
    def _note(self, event: str, entry: Entry, **fields: object) -> None:
        """Record ``event`` for ``entry`` (named by keyed hashes); AuditError propagates."""
        if self._audit is not None:
            study = entry.path.parent.name  # work/<study>/: the study's spool key
            self._audit.append(event, {**ids(self._audit, study, entry.sop_key), **fields})

    def _deid_note(self, entry: Entry, partner: str, profile: str, copy: Dataset) -> None:
        settings = self._stage.profile(profile).deidentify
        if settings is not None:
            self._note("deidentified", entry, partner=partner, profile=profile,
                       options=sorted(settings.options), pseudonym=str(copy.get("PatientID", "")))

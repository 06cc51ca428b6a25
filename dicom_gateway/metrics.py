"""Every metric the gateway exports, in one place, on an injectable registry.

Names follow Prometheus conventions: prefix ``dicom_gateway_``, base units, counters end in
``_total``. Labels come only from small fixed sets (``partner``, ``calling_ae`` from the
allow-list, ``status``, ``reason``, ``method``, ``result``, transfer syntax keywords of the
standard in ``original`` and ``sent``); never UIDs or patient data.
The catalogue with meanings is in ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from . import __version__

__all__ = ["ForwardMetrics", "Metrics", "SnapshotCollector"]

_NS = "dicom_gateway"
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)  # instances per call


class Metrics:
    """The gateway process's metrics on ``registry`` (a fresh one per gateway).

    Delivery metrics (:class:`ForwardMetrics`) live in each partner's forwarder process and are
    exposed here through a :class:`SnapshotCollector`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.build_info = Info("build", "Gateway version", namespace=_NS, registry=r)
        self.build_info.info({"version": __version__})
        self.protection_device = Gauge(
            "protection_device", "1 for the device protection runs on (cpu or cuda)",
            ["device"], namespace=_NS, registry=r)

        # receive
        self.received_instances = Counter(
            "received_instances", "C-STORE requests answered, by calling AE and outcome "
            "(stored, discarded, no_route, invalid, out_of_resources, error)",
            ["calling_ae", "status"], namespace=_NS, registry=r)
        self.received_bytes = Counter(
            "received_bytes", "Encoded bytes of C-STORE data sets stored in the spool",
            ["calling_ae"], namespace=_NS, registry=r)
        self.associations = Counter(
            "associations", "Association requests by result (accepted, rejected)",
            ["result"], namespace=_NS, registry=r)
        self.associations_active = Gauge(
            "associations_active", "Inbound associations open now", namespace=_NS, registry=r)
        self.receive_seconds = Histogram(
            "receive_duration_seconds", "Time from C-STORE request to response, per instance",
            namespace=_NS, registry=r, buckets=_STAGE_BUCKETS)
        self.tls_refusals = Counter(
            "inbound_tls_refusals", "Inbound connections refused by TLS: failed handshakes by "
            "reason, and calling_ae_mismatch (certificate not the one pinned for the calling AE)",
            ["reason"], namespace=_NS, registry=r)
        self.connections_refused = Counter(  # admission gate (decision 0022)
            "inbound_connections_refused", "Inbound connections ended by the gateway before an "
            "association, by reason (handshake_timeout, too_many_pending, too_many_from_source, "
            "malformed, calling_ae_not_allowed, called_ae_not_recognised, association_limit)",
            ["reason"], namespace=_NS, registry=r)
        self.connections_pending = Gauge(
            "inbound_connections_pending", "Inbound connections not associated yet (accepted, "
            "A-ASSOCIATE-RQ not complete or not yet admitted)", namespace=_NS, registry=r)
        self.association_requests_waiting = Gauge(
            "association_requests_waiting", "A-ASSOCIATE-RQs waiting for one of "
            "gateway.max_associations to end", namespace=_NS, registry=r)
        self.association_wait_seconds = Histogram(
            "association_wait_duration_seconds", "Time an admitted A-ASSOCIATE-RQ waited for a "
            "free association (0: one was free)", namespace=_NS, registry=r,
            buckets=_STAGE_BUCKETS)
        self.plain_tcp_links = Gauge(
            "plain_tcp_links", "1 for a DICOM link configured without TLS, 0 with TLS (link: "
            "listener or partner; partner: its name, empty for the listener)",
            ["link", "partner"], namespace=_NS, registry=r)
        self._stage_metrics(r)

    def _stage_metrics(self, r: CollectorRegistry) -> None:
        """Assembling, protecting, the spool and the audit trail."""
        self.open_studies = Gauge(
            "open_studies", "Studies in the inbox waiting to be stable", namespace=_NS, registry=r)
        self.studies_released = Counter(
            "studies_released", "Studies (or late parts of studies) released for processing",
            namespace=_NS, registry=r)
        self.streamed_instances = Counter(
            "streamed_instances", "Instances processed as soon as they were durable, without "
            "waiting for their study to be quiet (profiles with release: instance)",
            namespace=_NS, registry=r)
        self.protect_seconds = Histogram(
            "protect_duration_seconds", "Protection time per instance, by method (a series "
            "batch's time shared equally by its instances, one observation each)",
            ["method"], namespace=_NS, registry=r, buckets=_STAGE_BUCKETS)
        self.protect_batch_size = Histogram(
            "protect_batch_size", "Instances per protection call (one series of a study for "
            "one profile), by method", ["method"], namespace=_NS, registry=r,
            buckets=_BATCH_BUCKETS)
        self.seal_seconds = Histogram(
            "seal_duration_seconds", "Time to seal one protected instance for a partner "
            "(successful seals)", ["partner"], namespace=_NS, registry=r, buckets=_STAGE_BUCKETS)
        self.quarantined = Counter(
            "quarantined_instances", "Instances quarantined instead of forwarded, by reason",
            ["partner", "reason"], namespace=_NS, registry=r)

        self.spool_free_bytes = Gauge(
            "spool_free_bytes", "Free bytes on the spool's filesystem", namespace=_NS, registry=r)
        self.audit_last_sequence = Gauge(
            "audit_last_sequence", "Sequence number of the last record in the audit trail "
            "(-1: none, or audit.enabled is false); a drop means records were removed",
            namespace=_NS, registry=r)
        self.audit_writable = Gauge(
            "audit_writable", "1 while the gateway process's last audit record was written; 0 "
            "after a failed one (C-STOREs are refused meanwhile) or with audit.enabled false",
            namespace=_NS, registry=r)

    def declare(self, methods: Iterable[str], sealed_partners: Iterable[str]) -> None:
        """Create the labelled stage series of a configuration at zero, so that dashboards and
        alerts see them before the first observation (the label values are configured names)."""
        for method in methods:
            self.protect_seconds.labels(method=method)
            self.protect_batch_size.labels(method=method)
        for partner in sealed_partners:
            self.seal_seconds.labels(partner=partner)

    def declare_links(self, listener_tls: bool, partners_tls: Mapping[str, bool],
                      refusal_reasons: Iterable[str]) -> None:
        """Set ``plain_tcp_links`` for the listener and every partner (1: plain TCP), and
        create the inbound TLS refusal series at zero when the listener uses TLS."""
        self.plain_tcp_links.labels(link="listener", partner="").set(0 if listener_tls else 1)
        for name, tls in partners_tls.items():
            self.plain_tcp_links.labels(link="partner", partner=name).set(0 if tls else 1)
        if listener_tls:
            for reason in refusal_reasons:
                self.tls_refusals.labels(reason=reason)


class ForwardMetrics:
    """Delivery metrics of one partner's forwarder process, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.forwarded_instances = Counter(
            "forwarded_instances", "Instances delivered to a partner, by result (success, warning)",
            ["partner", "result"], namespace=_NS, registry=r)
        self.forwarded_bytes = Counter(
            "forwarded_bytes", "File bytes of instances delivered to a partner",
            ["partner"], namespace=_NS, registry=r)
        self.reencoded_instances = Counter(
            "reencoded_instances", "Instances delivered in another transfer syntax than they "
            "were stored in, because the partner rejected theirs (decision 0024), by the "
            "syntaxes' keywords (original, sent)",
            ["partner", "original", "sent"], namespace=_NS, registry=r)
        self.forward_attempts = Counter(
            "forward_attempts", "C-STORE attempts towards a partner (first tries and retries)",
            ["partner"], namespace=_NS, registry=r)
        self.forward_retries = Counter(
            "forward_retries", "Failed attempts scheduled for retry, by reason",
            ["partner", "reason"], namespace=_NS, registry=r)
        self.dead_letters = Counter(
            "dead_letters", "Instances moved to failed/ (gave up), by reason",
            ["partner", "reason"], namespace=_NS, registry=r)
        self.forward_seconds = Histogram(
            "forward_duration_seconds", "Time of a successful C-STORE to a partner",
            ["partner"], namespace=_NS, registry=r, buckets=_STAGE_BUCKETS)
        self.queue_depth = Gauge(
            "queue_depth", "Instances waiting in a partner's outbox", ["partner"],
            namespace=_NS, registry=r)
        self.queue_oldest_age = Gauge(
            "queue_oldest_age_seconds", "Age of the oldest instance in a partner's outbox",
            ["partner"], namespace=_NS, registry=r)
        self.partner_up = Gauge(
            "partner_up", "1 if the last association attempt to the partner succeeded",
            ["partner"], namespace=_NS, registry=r)


class SnapshotCollector:
    """Exposes the latest exposition text of other processes (the forwarders) as our own.

    Families with the same name from several processes are merged (their samples carry
    different ``partner`` labels). ``snapshots`` returns the current texts.
    """

    def __init__(self, snapshots: Callable[[], Iterable[str]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for text in self._snapshots():
            for family in text_string_to_metric_families(text):
                target = merged.setdefault(family.name,
                                           Metric(family.name, family.documentation, family.type))
                target.samples.extend(family.samples)
        return list(merged.values())

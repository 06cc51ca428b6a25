"""The gateway's settings: frozen typed objects, the one contract between the configuration
file and the code that runs on it.

They sit on the ground floor of the package: :mod:`.config` reads and validates the YAML file
into them, and every part of the runtime takes the part it needs. A protection profile's method
settings are the method's own typed options (:mod:`.protect.options`), parsed by the method.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .route import Route

__all__ = [
    "AuditConfig",
    "CallerPin",
    "Config",
    "ConnectionLimits",
    "DeidConfig",
    "GatewayConfig",
    "ListenConfig",
    "ListenTLS",
    "MethodOptions",
    "MetricsConfig",
    "NoRoute",
    "PartnerConfig",
    "PartnerTLS",
    "ProfileConfig",
    "ProtectionConfig",
    "RetryConfig",
    "SealConfig",
    "releases_per_instance",
]


class MethodOptions(Protocol):
    """A protection method's typed, validated settings (one frozen dataclass per method)."""

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (paths as text), for reports and certificates."""
        ...


@dataclass(frozen=True)
class CallerPin:
    """The client certificates a calling AE title may present on a TLS listener: a subject
    common name or a SHA-256 fingerprint of the certificate (lowercase hex) from either list."""

    subject_cn: tuple[str, ...] = ()
    sha256: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListenTLS:
    """TLS on the DICOM listener (PS3.15 Annex B, BCP 195; decision 0019): the gateway's
    certificate chain and key, and the CA that client certificates must chain to (always
    required: mutual authentication). ``callers`` pins calling AE titles to certificates."""

    certificate: str
    private_key: str
    client_ca: str
    callers: Mapping[str, CallerPin] = field(default_factory=dict)


@dataclass(frozen=True)
class PartnerTLS:
    """TLS towards a partner: the partner's certificate is checked against ``ca`` (with its
    host name when ``check_hostname``) and/or pinned by SHA-256 fingerprint; the gateway shows
    ``certificate`` (with ``private_key``) when given."""

    ca: str | None = None
    sha256: tuple[str, ...] = ()
    check_hostname: bool = True
    server_name: str | None = None  # the name checked (and sent as SNI); default: the host
    certificate: str | None = None
    private_key: str | None = None


@dataclass(frozen=True)
class ListenConfig:
    host: str
    port: int
    tls: ListenTLS | None = None  # None: plain TCP (announced at start)


@dataclass(frozen=True)
class RetryConfig:
    """Exponential backoff with jitter, bounded (dcm4chee's default: 30 s doubling to 10 min)."""

    initial_seconds: float = 30.0
    multiplier: float = 2.0
    max_seconds: float = 600.0
    max_attempts: int = 10
    jitter: float = 0.2


@dataclass(frozen=True)
class ConnectionLimits:
    """Inbound connections before they are associations (decision 0022): each has
    ``handshake_timeout_seconds`` from the TCP accept to a complete A-ASSOCIATE-RQ; at most
    ``max_pending_connections`` of them at once (``max_pending_per_source`` from one address);
    a request that finds every association busy waits ``association_wait_seconds`` for one."""

    handshake_timeout_seconds: float = 5.0
    max_pending_connections: int = 256
    max_pending_per_source: int = 64
    association_wait_seconds: float = 5.0


@dataclass(frozen=True)
class GatewayConfig:
    ae_title: str
    listen: ListenConfig
    allowed_callers: tuple[str, ...]
    spool_dir: Path
    max_associations: int = 10
    study_stable_seconds: float = 30.0
    max_pdu_bytes: int = 0
    acse_timeout_seconds: float = 30.0
    dimse_timeout_seconds: float = 60.0
    network_timeout_seconds: float = 60.0
    rescan_seconds: float = 5.0
    max_dataset_bytes: int = 1 << 30  # a received data set, inflated (decision 0023)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)  # decision 0022
    #: an A-ASSOCIATE-RQ whose called AE title is not ``ae_title`` is rejected (issue 15)
    require_called_ae_title: bool = True
    #: on SIGTERM, how long associations in progress and queued deliveries may take to finish
    drain_seconds: float = 30.0

    def accepts_called(self, called_ae: str) -> bool:
        """Whether an association addressed to ``called_ae`` (stripped) is for this gateway."""
        return not self.require_called_ae_title or called_ae == self.ae_title


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool
    listen: ListenConfig


@dataclass(frozen=True)
class PartnerConfig:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    associations: int = 2
    max_pdu_bytes: int = 0
    connect_timeout_seconds: float = 5.0
    acse_timeout_seconds: float = 10.0
    dimse_timeout_seconds: float = 10.0
    idle_release_seconds: float = 10.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    key: str | None = None  # the partner's public key file (``keys partner``) for the seal
    tls: PartnerTLS | None = None  # None: plain TCP (announced at start)


@dataclass(frozen=True)
class DeidConfig:
    """A profile's de-identification: DICOM PS3.15 Annex E, the Basic Application Level
    Confidentiality Profile with the named options (``deid/``; decision 0018)."""

    options: frozenset[str] = frozenset()  # option names (deid/options.py: OPTIONS)
    safe_private: tuple[tuple[int, str, int], ...] = ()  # (group, private creator, element)
    allow_pixel_risk: frozenset[str] = frozenset()  # burned-in, ultrasound, ... sent anyway
    max_date_shift_days: int = 365  # modified dates move back 1..N days per patient
    escrow: str | None = None  # the hospital's escrow public key (PEM X25519); None: no escrow


@dataclass(frozen=True)
class ProfileConfig:
    """A protection profile: a method and its settings, chosen by routes."""

    name: str
    method: str
    require_pixel_data: bool
    on_unprotectable: str  # "quarantine" (default, fail closed) or "forward"
    options: MethodOptions  # the method's own typed settings
    deidentify: DeidConfig | None = None  # None: headers leave as received
    #: "instance": each instance is processed as soon as it is durable (a method that reads no
    #: other instance); "study": after the study has been quiet (decision 0028)
    release: str = "study"


def releases_per_instance(profiles: Mapping[str, ProfileConfig], names: Iterable[str]) -> bool:
    """Whether an instance sent with the profiles ``names`` may go on as soon as it is durable:
    each of them says ``release: instance`` (decision 0028); a name ``profiles`` lacks (a
    configuration changed under a spooled instance) waits for the study to be quiet."""
    return all((p := profiles.get(name)) is not None and p.release == "instance"
               for name in names)


@dataclass(frozen=True)
class NoRoute:
    """What to do with an instance no route matches: reject, discard, or send to a partner."""

    action: str  # "reject" | "discard" | "forward"
    partner: str | None = None
    profile: str | None = None


@dataclass(frozen=True)
class ProtectionConfig:
    """Where protection runs: ``device`` auto|cpu|cuda, ``threads`` for torch on the CPU."""

    device: str = "auto"
    threads: int = 0


@dataclass(frozen=True)
class SealConfig:
    """The gateway identity that seals protected output (files from ``keys init``)."""

    signing_key: str
    uid_secret: str
    gateway_id: str
    uid_root: str = "2.25"


@dataclass(frozen=True)
class AuditConfig:
    """The audit trail (decision 0020): hash-chained JSON Lines, one file per UTC day, in
    ``dir``; ``secret`` keys the chain and the identifiers' hashes (None: the seal's
    ``uid_secret``, else ``audit-secret.key`` created in ``dir``)."""

    dir: Path
    secret: str | None = None


@dataclass(frozen=True)
class Config:
    source: str
    gateway: GatewayConfig
    metrics: MetricsConfig
    profiles: Mapping[str, ProfileConfig]
    partners: Mapping[str, PartnerConfig]
    routes: tuple[Route, ...]
    no_route: NoRoute
    log_level: str = "INFO"
    protection: ProtectionConfig = field(default_factory=ProtectionConfig)
    seal: SealConfig | None = None
    audit: AuditConfig | None = None  # None: no audit trail (``audit.enabled: false``)

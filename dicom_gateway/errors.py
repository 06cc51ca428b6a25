"""Failures of the gateway, shaped by what happens next.

::

    GatewayError
    ├── ConfigError            the configuration cannot be used: names file, key path, problem
    ├── SpoolError             the spool cannot take or give an entry (disk full, permissions)
    ├── RecordError            a spool record (routing, retry state, reason) cannot be read
    ├── InstanceError          this instance cannot be processed: quarantine it with the reason
    │   └── ProtectionError    a protection method failed on it (fail closed)
    └── DeliveryError          a forward attempt did not deliver
        ├── PartnerUnavailable retry later with backoff (no association, abort, timeout, A7xx)
        └── PartnerRefused     give up: move to failed/ with the reason (Cxxx, A9xx, ...)

Foreign errors (pynetdicom, OSError, yaml) are translated at one boundary each with
``raise ... from``; only :mod:`dicom_gateway.forward` knows DIMSE status codes of partners and
only :mod:`dicom_gateway.receive` chooses the statuses we answer with.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeliveryError",
    "GatewayError",
    "InstanceError",
    "PartnerRefused",
    "PartnerUnavailable",
    "ProtectionError",
    "RecordError",
    "SpoolError",
]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration problem, located by file and key path.

    Parameters
    ----------
    source : str
        The file (or ``<embedded defaults>``) the value came from.
    path : str
        The key path, e.g. ``routes[1].match.tags.SeriesDescription``; empty for the file.
    problem : str
        What is wrong, phrased for the person editing the file.
    """

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class SpoolError(GatewayError):
    """The spool cannot store or move an entry; ``out_of_space`` tells ENOSPC/EDQUOT apart."""

    def __init__(self, message: str, *, out_of_space: bool = False) -> None:
        super().__init__(message)
        self.out_of_space = out_of_space


class RecordError(GatewayError):
    """A JSON record of the spool is corrupt, or from a release newer than this one."""


class InstanceError(GatewayError):
    """This instance cannot be processed; the reason goes into its quarantine entry.

    ``reason`` is a short fixed token usable as a metrics label (e.g. ``no_pixel_data``);
    the message is the human explanation.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProtectionError(InstanceError):
    """A protection method could not protect the instance (never forward it unprotected)."""


class DeliveryError(GatewayError):
    """A forward attempt failed; ``reason`` is a short fixed token for metrics labels.

    ``scope`` says what the failure says about the partner: ``"partner"`` (it could not be
    reached or is overloaded: hold all its deliveries) or ``"instance"`` (only this send failed).
    """

    def __init__(self, reason: str, message: str, *, status: int | None = None,
                 scope: str = "partner") -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.scope = scope


class PartnerUnavailable(DeliveryError):
    """Transient: the partner could not be reached or was out of resources. Retry later."""


class PartnerRefused(DeliveryError):
    """Permanent for this instance: the partner refused it. Give up (dead letter)."""

"""Failures of the gateway, shaped by what happens next.

::

    GatewayError               every failure on purpose; its message is written for the user
    ├── ConfigError            the configuration cannot be used: names file, key path, problem
    ├── DeviceError            the protection device asked for is not there (protection.device)
    ├── DependencyError        a feature needs a package that is not installed (names both)
    ├── KeyFileError           a key file is missing, malformed or too open (names the file)
    ├── TLSFileError           a TLS certificate, key or CA file cannot be used (file and key)
    ├── SurrogateError         a surrogate model file cannot be used (names the file)
    ├── DatasetError           labelled training data cannot be read or does not fit the task
    ├── SpoolError             the spool cannot take or give an entry (disk full, permissions)
    ├── RecordError            a spool record (routing, retry state, reason) cannot be read
    ├── AuditError             the audit trail cannot be written, or does not verify
    ├── InstanceError          this instance cannot be processed: quarantine it with the reason
    │   ├── ProtectionError    a protection method failed on it (fail closed)
    │   └── PixelError         its pixel data cannot be handled losslessly
    ├── SealError              a sealed instance does not verify or restore (partner side)
    └── DeliveryError          a forward attempt did not deliver
        ├── PartnerUnavailable retry later with backoff (no association, abort, timeout, A7xx)
        └── PartnerRefused     give up: move to failed/ with the reason (Cxxx, A9xx, ...)

Foreign errors (pynetdicom, OSError, yaml, torch) are translated at one boundary each with
``raise ... from``; only :mod:`dicom_gateway.forward` knows DIMSE status codes of partners and
only :mod:`dicom_gateway.receive` chooses the statuses we answer with. The command line
(:mod:`dicom_gateway.cli`) prints a :class:`GatewayError` or an ``OSError`` as one line; any
other exception is a bug and is reported as an internal error.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "ConfigError",
    "DatasetError",
    "DeliveryError",
    "DependencyError",
    "DeviceError",
    "GatewayError",
    "InstanceError",
    "KeyFileError",
    "PartnerRefused",
    "PartnerUnavailable",
    "PixelError",
    "ProtectionError",
    "RecordError",
    "SealError",
    "SpoolError",
    "SurrogateError",
    "TLSFileError",
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


class DeviceError(GatewayError):
    """The protection device the configuration asks for is not available here."""


class DependencyError(GatewayError):
    """A feature needs an optional package that is not installed; the message names both."""


class KeyFileError(GatewayError):
    """A key file is missing, malformed or too open; the message names the file."""


class TLSFileError(GatewayError):
    """A TLS certificate, private key or CA file cannot be used (decision 0019).

    ``key`` names the setting that gave the file (``certificate``, ``private_key``,
    ``client_ca``, ``ca``); the message names the file and the problem.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class SurrogateError(GatewayError):
    """A surrogate model file cannot be used; the message names the file and why."""


class DatasetError(GatewayError):
    """Labelled images cannot be read, or do not fit the task or model asked for."""


class SpoolError(GatewayError):
    """The spool cannot store or move an entry; ``out_of_space`` tells ENOSPC/EDQUOT apart."""

    def __init__(self, message: str, *, out_of_space: bool = False) -> None:
        super().__init__(message)
        self.out_of_space = out_of_space


class RecordError(GatewayError):
    """A JSON record of the spool is corrupt, or from a release newer than this one."""


class AuditError(GatewayError):
    """The audit trail cannot be written (the work that needed the record is refused: fail
    closed), or it does not verify; the message names the file and, when known, the record."""


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


class PixelError(InstanceError):
    """The instance's pixel data cannot be handled losslessly; ``reason`` says why."""


class SealError(GatewayError):
    """A sealed instance does not verify or cannot be restored; ``reason`` is a short fixed
    token (``no_seal``, ``bad_signature``, ``wrong_key``... see :mod:`.seal.opener`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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

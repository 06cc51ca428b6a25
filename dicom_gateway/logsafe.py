"""No patient data in logs: pynetdicom's own logging is limited to warnings and errors.

pynetdicom logs request and response identifiers (patient names, IDs, dates) at INFO/DEBUG;
every process that uses pynetdicom calls :func:`quiet_pynetdicom` once.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_pynetdicom"]


def quiet_pynetdicom() -> None:
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

"""The events of the audit trail and the fields they carry (decision 0020).

No field holds an identifier: a study, series or instance of the hospital is named by the
trail's keyed hash of its UID (:meth:`~.trail.AuditTrail.identifier`); what a partner received
is named by the UIDs it received, which are keyed derivations (``seal/uids.py``) or, for a
pass-through instance, not recorded at all (``"out": null``: the originals went out).

=========================  =====================================================================
event                      fields
=========================  =====================================================================
``gateway_started``        ``version``, ``pid``, ``partners``, ``key_ids`` (gateway, partners)
``gateway_stopped``        ``pid``
``audit_recovered``        ``dropped_bytes``, ``after_seq``: a line cut short by a crash
``audit_resumed``          ``pid``: the trail is writable again after a failed append (the
                           gateway refused instances, ``/readyz`` 503, until this record)
``association_accepted``   ``peer`` (address:port), ``calling_ae``, ``called_ae``, ``tls``
``association_rejected``   ``peer``, ``calling_ae``, ``reason``, ``tls``
``received``               ``study``, ``series``, ``sop`` (hashes), ``calling_ae``,
                           ``destinations`` (``partner``, ``profile``, ``route``): the routing
``protected``              ``study``, ``sop``, ``profile``, ``method``, ``parameters_sha256``
``deidentified``           ``study``, ``sop``, ``partner``, ``profile``, ``options``,
                           ``pseudonym``
``sealed``                 ``study``, ``sop``, ``partner``, ``profile``, ``method``,
                           ``manifest_sha256``, ``out`` (``study``, ``series``, ``sop``)
``prepared``               as ``sealed`` without a manifest: an unsealed copy in the outbox
``forwarded``              ``study``, ``sop``, ``partner``, ``result``
``retry``                  ``study``, ``sop``, ``partner``, ``reason``, ``attempts``
``failed``                 ``study``, ``sop``, ``partner``, ``reason``, ``attempts``
``quarantined``            ``study``, ``sop``, ``partner``, ``profile``, ``reason``
``operator``               ``action`` (``spool retry``, ``spool purge``, ``keys init``,
                           ``keys partner``, ``keys escrow``), ``user``, ``uid``, and what it
                           acted on
=========================  =====================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ..seal.block import read_block
from .trail import AuditTrail

__all__ = ["EVENTS", "entry_ids", "entry_sop", "ids", "manifest_sha256", "operator", "outgoing",
           "parameters_sha256"]

EVENTS = frozenset({
    "gateway_started", "gateway_stopped", "audit_recovered", "audit_resumed",
    "association_accepted",
    "association_rejected", "received", "protected", "deidentified", "sealed", "prepared",
    "forwarded", "retry", "failed", "quarantined", "operator"})


def ids(trail: AuditTrail, study: str, sop: str) -> dict[str, str]:
    """``study`` and ``sop`` fields: keyed hashes of the (spool keys of the) UIDs."""
    return {"study": trail.identifier(study), "sop": trail.identifier(sop)}


def entry_ids(trail: AuditTrail, name: str) -> dict[str, str]:
    """The ``study`` and ``sop`` fields of an outbox or failed entry, from its name
    ``<study>_<sop>`` (spool keys: UIDs or ``h``-hashes, never with an underscore)."""
    study, _, sop = name.rpartition("_")
    return ids(trail, study, sop)


def entry_sop(name: str) -> str:
    """The SOP Instance UID's spool key in any entry name (``<study>_<sop>``, ``<sop>~<key>``)."""
    return name.split("~", 1)[0].rpartition("_")[2]


def outgoing(ds: Dataset) -> dict[str, str]:
    """The UIDs a partner receives (derived ones: keyed, already in the partner's hands)."""
    return {"study": str(ds.get("StudyInstanceUID", "")),
            "series": str(ds.get("SeriesInstanceUID", "")),
            "sop": str(ds.get("SOPInstanceUID", ""))}


def manifest_sha256(ds: Dataset) -> str | None:
    """SHA-256 of the signed manifest's bytes in ``ds``'s seal (None: not sealed)."""
    block = read_block(ds)
    return None if block is None else hashlib.sha256(block[0]).hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def parameters_sha256(parameters: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a method's parameters (what the manifest holds)."""
    text = json.dumps(dict(parameters), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def operator(action: str, **fields: Any) -> dict[str, Any]:
    """An operator action's fields: the action, the user running it, what it acted on."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"action": action, "user": user, "uid": uid, **fields}

"""The audit trail (decision 0020): an append-only, keyed hash chain of JSON Lines records of
every event that matters, with no identifiers in it; its queries and leak tracing."""

from .chain import AuditKeys, Record
from .events import EVENTS
from .keyfile import identifier_key, open_trail, secret_path
from .ledger import Ledger
from .trace import Finding, trace_file
from .trail import AuditTrail, TrailSpec, Verdict

__all__ = ["EVENTS", "AuditKeys", "AuditTrail", "Finding", "Ledger", "Record", "TrailSpec",
           "Verdict", "identifier_key", "open_trail", "secret_path", "trace_file"]

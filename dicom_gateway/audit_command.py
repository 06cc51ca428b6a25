"""The audit trail's commands: ``audit verify``, ``audit sent``, ``audit study`` and ``trace``.

::

    dicom-gateway audit verify --config FILE
    dicom-gateway audit sent --config FILE --partner P [--since T1] [--until T2]
    dicom-gateway audit study --config FILE STUDY_UID
    dicom-gateway audit ref --config FILE UID...
    dicom-gateway trace --config FILE FILE_OR_FOLDER...

Exit status: ``audit verify`` 0 when the chain verifies, 1 at the first bad record (named by
its sequence number and place). The queries answer from the records whose MAC verifies and
exit 1 when the chain does not verify (after a warning), else 0. ``trace`` exits 0 when every
file names its partner, 3 when some file identifies none (and none is unreadable), 1 when a
file cannot be read or the chain does not verify. Decision 0020.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .audit import AuditTrail, Ledger, identifier_key, open_trail, trace_file
from .audit.ledger import Delivery, parse_time
from .audit.trace import Finding
from .config import load_config
from .errors import AuditError
from .logsafe import log_reference
from .settings import Config

__all__ = ["add_parsers"]


def _trail(args: argparse.Namespace) -> tuple[Config, AuditTrail]:
    config = load_config(args.config)
    trail = open_trail(config)
    if trail is None:
        raise AuditError(f"{args.config}: audit.enabled is false: there is no audit trail")
    return config, trail


def _checked(trail: AuditTrail) -> bool:
    verdict = trail.verify()
    if not verdict.ok:
        print(f"WARNING: the audit trail does not verify ({verdict.problem}); the answer below "
              "uses only records whose MAC verifies", file=sys.stderr)
    return verdict.ok


def _cmd_verify(args: argparse.Namespace) -> int:
    _, trail = _trail(args)
    v = trail.verify()
    if not v.ok:
        print(f"audit trail BROKEN in {trail.directory}: {v.problem}")
        print(f"{v.count} record(s) before it verify"
              + (f" (seq {v.first.seq}..{v.last.seq})" if v.first and v.last else ""))
        return 1
    if v.first is None or v.last is None:
        print(f"audit trail OK: no records yet in {trail.directory}")
        return 0
    start = "" if v.first.seq == 1 else (f"; it starts at seq {v.first.seq}: the files before "
                                        "were removed (retention)")
    print(f"audit trail OK: {v.count} record(s), seq {v.first.seq}..{v.last.seq} in {v.files} "
          f"file(s) under {trail.directory}; last record {v.last.time}, MAC {v.last.mac}{start}")
    return 0


def _cmd_sent(args: argparse.Namespace) -> int:
    _, trail = _trail(args)
    ok = _checked(trail)
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    deliveries = Ledger(trail.records()).sent(args.partner, since, until)
    studies: dict[str, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        studies[d.study].append(d)
    print(f"partner {args.partner}, {args.since or 'start'} .. {args.until or 'now'}: "
          f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, {len(deliveries)} "
          "instance(s)")
    for study, items in studies.items():
        times = sorted(r.time for d in items for r in d.forwarded)
        print(f"  study {study}: {len(items)} instance(s), forwarded {times[0]} .. {times[-1]}; "
              f"{_how(items)}")
    return 0 if ok else 1


def _how(items: list[Delivery]) -> str:
    """Profiles, methods and the study UIDs the partner received, of some deliveries."""
    profiles = sorted({str(d.field("profile")) for d in items if d.prepared is not None})
    methods = sorted({str(d.field("method")) for d in items if d.prepared is not None})
    out = sorted({(d.out or {}).get("study", "") for d in items if d.out is not None})
    unchanged = any(d.prepared is not None and d.out is None for d in items)
    uids = ", ".join(out) + (" and " if out and unchanged else "") + (
        "the original study UID (pass-through)" if unchanged else "")
    return (f"profile {', '.join(profiles) or '?'}, method {', '.join(methods) or '?'}; "
            f"partner's study UID: {uids or '?'}")


def _cmd_study(args: argparse.Namespace) -> int:
    _, trail = _trail(args)
    ok = _checked(trail)
    study = trail.identifier(args.study_uid)
    received, partners = Ledger(trail.records()).study(study)
    print(f"study {study} (the trail's keyed hash of the UID given)")
    if not received and not partners:
        print("  no record of this study in the audit trail")
        return 0 if ok else 1
    if received:
        sops = {r.fields.get("sop") for r in received}
        callers = sorted({str(r.fields.get("calling_ae")) for r in received})
        routes = sorted({f"{d['partner']} ({d['profile']}, route {d['route']})"
                         for r in received for d in r.fields.get("destinations", [])})
        print(f"  received: {len(sops)} instance(s) from {', '.join(callers)}, "
              f"{received[0].time} .. {received[-1].time}; routed to {', '.join(routes)}")
    for s in partners:
        print(f"  {s.partner}: {len(s.forwarded)} instance(s) forwarded"
              + (f" {s.first} .. {s.last}" if s.first else "")
              + f"; {s.prepared} prepared (profile {', '.join(sorted(s.profiles)) or '-'}, "
              f"method {', '.join(sorted(s.methods)) or '-'}); partner's study UID: "
              f"{', '.join(sorted(s.out_studies)) or ('original' if s.prepared else '-')}"
              + (f"; retries {s.retries}" if s.retries else "")
              + (f"; failed {_counts(s.failed)}" if s.failed else "")
              + (f"; quarantined {_counts(s.quarantined)}" if s.quarantined else ""))
    return 0 if ok else 1


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


def _inputs(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return found


def _public(config: Config) -> Any:
    if config.seal is None:
        return None
    from .seal.keys import load_gateway_keys

    return load_gateway_keys(Path(config.seal.signing_key),
                             Path(config.seal.uid_secret)).signing.public_key()


def _describe(f: Finding) -> str:
    if f.error is not None:
        return f"unreadable: {f.error}"
    if f.partner is None:
        sent = sorted({d.partner for d in f.unchanged})
        tail = (f"; its original UIDs were sent unchanged to: {', '.join(sent)} (any of them, "
                "or the hospital, may be the source)" if sent else
                "; the audit trail has no record of its UIDs")
        return f"unknown: {f.how}{tail}"
    m = f.manifest if f.signature in ("valid", "not checked") else None
    times = sorted(r.time for d in f.deliveries for r in d.forwarded)
    profile = sorted({str(d.field("profile")) for d in f.deliveries if d.prepared is not None})
    method = m.get("method") if m else (f.deliveries[0].field("method") if f.deliveries
                                         else None)
    return (f"partner {f.partner}; by {f.how}; profile {', '.join(profile) or '?'}, method "
            f"{method or '?'}" + (f"; sealed {m.get('time')}" if m else "")
            + (f"; forwarded {', '.join(times)}" if times else "; no forwarding recorded"))


def _cmd_trace(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    trail = open_trail(config)
    ok = _checked(trail) if trail is not None else True
    ledger = Ledger(trail.records() if trail is not None else [])
    public = _public(config)
    findings = [trace_file(path, ledger, trail, public) for path in _inputs(args.inputs)]
    for f in findings:
        print(f"{f.path}: {_describe(f)}")
    unreadable = sum(f.error is not None for f in findings)
    unknown = sum(f.error is None and f.partner is None for f in findings)
    print(f"{len(findings)} file(s): {len(findings) - unknown - unreadable} traced to a partner, "
          f"{unknown} unknown, {unreadable} unreadable")
    if unreadable or not ok or not findings:
        return 1
    return 3 if unknown else 0


def _cmd_ref(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    trail = open_trail(config)
    if trail is None and config.seal is None:
        raise AuditError(f"{args.config}: neither an audit trail nor a seal section: log lines "
                         "name UIDs under a key made for each run of the gateway")
    key = identifier_key(config, trail)
    for uid in args.uids:
        print(f"{uid}: log {log_reference(key, uid)}"
              + (f", audit trail {trail.identifier(uid)}" if trail is not None else ""))
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``audit verify|sent|study|ref`` and ``trace`` to the command line's subparsers."""
    a = sub.add_parser("audit", help="check and query the audit trail")
    asub = a.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="check the whole chain; name the first bad record")
    v.add_argument("--config", required=True)
    v.set_defaults(func=_cmd_verify)
    s = asub.add_parser("sent", help="what went to a partner between two times")
    s.add_argument("--config", required=True)
    s.add_argument("--partner", required=True)
    s.add_argument("--since", help="ISO 8601 date or time (UTC unless it says otherwise)")
    s.add_argument("--until", help="ISO 8601 date or time (UTC unless it says otherwise)")
    s.set_defaults(func=_cmd_sent)
    st = asub.add_parser("study", help="where a study went (give its original Study UID)")
    st.add_argument("--config", required=True)
    st.add_argument("study_uid")
    st.set_defaults(func=_cmd_study)
    r = asub.add_parser("ref", help="how log lines and the trail name a UID (uid#...)")
    r.add_argument("--config", required=True)
    r.add_argument("uids", nargs="+", metavar="UID")
    r.set_defaults(func=_cmd_ref)
    t = sub.add_parser("trace", help="which partner received a DICOM file found outside")
    t.add_argument("--config", required=True)
    t.add_argument("inputs", nargs="+", help="files or folders")
    t.set_defaults(func=_cmd_trace)

"""The ``dicom-gateway`` command line.

Commands (a contract other tools and users rely on)::

    dicom-gateway serve --config FILE
    dicom-gateway check-config FILE
    dicom-gateway spool list|retry|purge --config FILE [...]
    dicom-gateway demo [--out DIR] [--serve]
    dicom-gateway protect --config FILE --profile NAME [--partner NAME] IN... --out DIR
    dicom-gateway train-surrogate --data PATH --arch NAME --out FILE [--task ...]
    dicom-gateway protect-dataset --method unlearnable --data PATH --out DIR
    dicom-gateway audit verify|sent|study|ref --config FILE [...]
    dicom-gateway trace --config FILE FILE...
    dicom-gateway keys init|partner|escrow --out DIR [...]
    dicom-gateway escrow open --key FILE FILE...

Errors are one line on stderr and a non-zero exit code (2: configuration, 1: anything else).
This is the boundary: a :class:`~dicom_gateway.errors.GatewayError` (every failure the gateway
raises on purpose, its message written for the user) or an ``OSError`` is printed as it is;
anything else is a bug, reported as an internal error. Set ``DICOM_GATEWAY_DEBUG=1`` to see a
traceback instead. ``verify`` and ``restore`` also exit 3 when nothing is invalid but
some instance is not sealed (:mod:`.seal.command`); ``trace`` exits 3 when some file
identifies no partner (:mod:`.audit_command`); ``escrow open`` exits 3 when some file carries
no escrow (:mod:`.deid.escrow_command`). Operator actions (``spool retry``, ``spool
purge``, and ``keys`` given ``--config``) are recorded in the audit trail before they act.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from .spool import Entry

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_config
    from .gateway import Gateway
    from .logsafe import scrub_logs

    config = load_config(args.config)
    _setup_logging(config.log_level)
    gateway = Gateway(config)
    scrub_logs(gateway.log_key)
    try:
        gateway.start()
    except OSError as exc:
        gateway.stop()
        raise GatewayError(f"cannot start: {exc.strerror or exc}") from None
    except GatewayError:
        gateway.stop()
        raise

    def _term(signum: int, frame: object) -> None:
        if gateway.stopping:  # a second signal: stop draining
            logging.getLogger(__name__).info("signal %d: draining cut short", signum)
            gateway.cut_drain()
            return
        logging.getLogger(__name__).info("signal %d: draining, then stopping", signum)
        gateway.request_stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    gateway.wait()
    gateway.drain(config.gateway.drain_seconds)
    gateway.stop()
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .config import load_config
    from .stage import configure_device, protection_advice

    config = load_config(args.file)
    if config.protection.device == "cuda":  # only this machine can answer that one
        configure_device(config)
    for note in protection_advice(config):
        print(f"{args.file}: note: {note}")
    print(f"{args.file}: OK: {len(config.partners)} partner(s), {len(config.routes)} route(s), "
          f"{len(config.profiles)} profile(s), no_route={config.no_route.action}")
    return 0


def _spool(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .config import load_config
    from .spool import Spool

    config = load_config(args.config)
    args.loaded = config
    return Spool(config.gateway.spool_dir)


def _operator(args: argparse.Namespace, action: str, entries: list[Entry] | None = None,
              **fields: Any) -> None:
    """Record an operator action in the configuration's audit trail before it acts (decision
    0020): an AuditError stops the command there. Entries are named by keyed hashes."""
    from .audit import open_trail
    from .audit.events import entry_sop, operator

    config = getattr(args, "loaded", None)
    if config is None:
        from .config import load_config

        config = load_config(args.config)
    trail = open_trail(config, create=True)
    if trail is None:
        return
    if entries is not None:
        fields["count"] = len(entries)
        fields["instances"] = [trail.identifier(entry_sop(e.name)) for e in entries]
    trail.append("operator", operator(action, **fields))


def _cmd_spool_list(args: argparse.Namespace) -> int:
    spool = _spool(args)
    now = time.time()
    states = [args.state] if args.state else ["inbox", "work", "outbox", "failed", "quarantine"]
    total = 0
    print(f"{'STATE':<11} {'PARTNER/STUDY':<24} {'AGE_S':>8} {'TRIES':>5}  NAME  REASON")
    for state in states:
        for group, entry in spool.entries(state, args.partner):
            tries, reason, message = _why(entry)
            age = now - entry.path.stat().st_mtime if entry.path.exists() else 0.0
            print(f"{state:<11} {group[:24]:<24} {age:>8.0f} {tries!s:>5}  {entry.name}  "
                  f"{reason}{': ' + message if message else ''}")
            total += 1
    print(f"{total} entr{'y' if total == 1 else 'ies'}")
    return 0


def _why(entry: Entry) -> tuple[int | str, str, str]:
    """(tries, reason, message) of a spool entry, from its reason file or its retry state."""
    why = entry.set_aside_reason()
    if why is not None:
        return "" if why.attempts is None else why.attempts, why.reason, why.message
    state = entry.retry_state()
    return (state.attempts or "", state.reason, state.last_error)


def _selected(spool, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    for group, entry in list(spool.entries(args.state, args.partner)):
        if args.names and entry.name not in args.names:
            continue
        older_than = getattr(args, "older_than", None)
        if older_than and time.time() - entry.path.stat().st_mtime < older_than:
            continue
        yield group, entry


def _cmd_spool_retry(args: argparse.Namespace) -> int:
    spool = _spool(args)
    n = 0
    chosen = list(_selected(spool, args))
    _operator(args, "spool retry", [e for _, e in chosen], state=args.state,
              partner=args.partner)
    for group, entry in chosen:
        spool.requeue(args.state, entry, group)
        n += 1
    where = "outbox (delivery)" if args.state == "failed" else "inbox (protection)"
    when = ("gateway.rescan_seconds" if args.state == "failed" else
            "gateway.rescan_seconds plus the study's quiet period (gateway.study_stable_seconds)")
    print(f"requeued {n} entr{'y' if n == 1 else 'ies'} from {args.state}/ to the {where}; "
          f"a running gateway picks them up within {when}")
    return 0


def _cmd_spool_purge(args: argparse.Namespace) -> int:
    spool = _spool(args)
    n = 0
    chosen = list(_selected(spool, args))
    _operator(args, "spool purge", [e for _, e in chosen], state=args.state,
              partner=args.partner, older_than=getattr(args, "older_than", None))
    for _, entry in chosen:
        spool.purge(args.state, entry)
        n += 1
    print(f"purged {n} entr{'y' if n == 1 else 'ies'} from {args.state}/")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _setup_logging("WARNING" if not args.verbose else "INFO")
    return run_demo(Path(args.out), serve=args.serve, data_dir=args.data_dir, verbose=args.verbose)


def _cmd_keys_init(args: argparse.Namespace) -> int:
    from .seal.keys import init_gateway_keys

    keys = init_gateway_keys(Path(args.out))
    if args.config:
        _operator(args, "keys init", key_id=keys.key_id)
    print(f"gateway keys in {args.out}: gateway-signing.key and uid-secret.key (0600, keep "
          f"private), gateway-signing.pub (give to partners); key id {keys.key_id}")
    return 0


def _cmd_keys_partner(args: argparse.Namespace) -> int:
    from .seal.keys import new_partner_key

    key = new_partner_key(args.name, Path(args.out), args.suite)
    if args.config:
        _operator(args, "keys partner", name=key.name, key_id=key.key_id, suite=key.suite_name)
    print(f"partner key {key.name} ({key.suite_name}) in {args.out}: {key.name}.key (0600, the "
          f"partner keeps it), {key.name}.pub (the gateway's 'key'); key id {key.key_id}")
    return 0


def _cmd_keys_escrow(args: argparse.Namespace) -> int:
    from .deid.escrow import new_escrow_key

    key = new_escrow_key(Path(args.out), args.name)
    if args.config:
        _operator(args, "keys escrow", name=args.name, key_id=key.key_id)
    print(f"escrow key {args.name} in {args.out}: {args.name}.key (0600, the hospital keeps it "
          f"away from the gateway), {args.name}.pub (a profile's deidentify.escrow); key id "
          f"{key.key_id}")
    return 0


def _cmd_escrow_open(args: argparse.Namespace) -> int:
    from .deid.escrow_command import run_escrow_open

    return run_escrow_open(args.key, args.inputs)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .seal.command import run_verify

    return run_verify(args.gateway_key, args.inputs)


def _cmd_restore(args: argparse.Namespace) -> int:
    from .seal.command import run_restore

    return run_restore(args.key, args.gateway_key, args.inputs, Path(args.out))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicom-gateway", description="DICOM egress gateway")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _add_gateway_commands(sub)
    _add_partner_commands(sub)
    from .audit_command import add_parsers as add_audit_commands

    add_audit_commands(sub)
    from .lab.command import add_parsers as add_lab_commands

    add_lab_commands(sub)

    d = sub.add_parser("demo", help="run gateway + local partner and send a sample study")
    d.add_argument("--out", default="demo-out", help="where spool and partner output go")
    d.add_argument("--data-dir", default=os.environ.get("DICOM_GATEWAY_DATA"),
                   help="shared data directory (uses its real CT series when present)")
    d.add_argument("--serve", action="store_true", help="keep running after the study arrived")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return p


def _add_gateway_commands(sub: Any) -> None:
    """The hospital side: serve, check-config, spool."""
    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", required=True, help="YAML configuration file")
    s.set_defaults(func=_cmd_serve)

    c = sub.add_parser("check-config", help="validate a configuration file")
    c.add_argument("file")
    c.set_defaults(func=_cmd_check_config)

    sp = sub.add_parser("spool", help="inspect and repair the spool")
    ssub = sp.add_subparsers(dest="spool_command", required=True)
    ls = ssub.add_parser("list", help="list spooled entries")
    ls.add_argument("--config", required=True)
    ls.add_argument("--state", choices=["inbox", "work", "outbox", "failed", "quarantine"])
    ls.add_argument("--partner")
    ls.set_defaults(func=_cmd_spool_list)
    for name, func, helptext in (("retry", _cmd_spool_retry, "requeue failed/quarantined entries"),
                                 ("purge", _cmd_spool_purge, "delete failed/quarantined entries")):
        x = ssub.add_parser(name, help=helptext)
        x.add_argument("--config", required=True)
        x.add_argument("--state", choices=["failed", "quarantine"], default="failed")
        x.add_argument("--partner")
        x.add_argument("names", nargs="*", help="entry names (default: all matching)")
        if name == "purge":
            x.add_argument("--older-than", type=float, metavar="SECONDS")
        x.set_defaults(func=func)


def _add_partner_commands(sub: Any) -> None:
    """Keys (both sides), and the partner's verify and restore."""

    k = sub.add_parser("keys", help="create gateway and partner keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ki = ksub.add_parser("init", help="the gateway identity: signing key and UID secret")
    ki.add_argument("--out", required=True, help="folder (files are never overwritten)")
    ki.add_argument("--config", help="record the new key id in this configuration's audit trail")
    ki.set_defaults(func=_cmd_keys_init)
    kp = ksub.add_parser("partner", help="an HPKE key pair for a partner")
    kp.add_argument("--name", required=True)
    kp.add_argument("--out", required=True)
    kp.add_argument("--suite", default="x25519", choices=["x25519", "mlkem768-x25519"])
    kp.add_argument("--config", help="record the new key id in this configuration's audit trail")
    kp.set_defaults(func=_cmd_keys_partner)
    ke = ksub.add_parser("escrow", help="the hospital's re-identification escrow key pair")
    ke.add_argument("--name", default="hospital-escrow", help="file names NAME.key, NAME.pub")
    ke.add_argument("--out", required=True, help="folder (files are never overwritten)")
    ke.add_argument("--config", help="record the new key id in this configuration's audit trail")
    ke.set_defaults(func=_cmd_keys_escrow)

    es = sub.add_parser("escrow", help="re-identification escrow (hospital tool)")
    esub = es.add_subparsers(dest="escrow_command", required=True)
    eo = esub.add_parser("open", help="print the original identifiers of de-identified files")
    eo.add_argument("--key", required=True, help="the hospital's escrow private key (NAME.key)")
    eo.add_argument("inputs", nargs="+", help="files or folders")
    eo.set_defaults(func=_cmd_escrow_open)

    v = sub.add_parser("verify", help="check the seal of protected files (partner tool)")
    v.add_argument("--gateway-key", required=True, help="the gateway's gateway-signing.pub")
    v.add_argument("inputs", nargs="+", help="files or folders")
    v.set_defaults(func=_cmd_verify)

    rs = sub.add_parser("restore", help="restore the originals from sealed files (partner tool)")
    rs.add_argument("--key", required=True, help="the partner's private key (NAME.key)")
    signature = rs.add_mutually_exclusive_group(required=True)
    signature.add_argument("--gateway-key",
                           help="the gateway's gateway-signing.pub: each signature is checked")
    signature.add_argument("--no-verify", action="store_true",
                           help="restore without checking signatures (anyone can make a seal "
                                "for your public key)")
    rs.add_argument("--out", required=True)
    rs.add_argument("inputs", nargs="+", help="files or folders")
    rs.set_defaults(func=_cmd_restore)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"dicom-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or socket the user named: errno text and the path
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"dicom-gateway: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("DICOM_GATEWAY_DEBUG") == "1":
            raise
        print(f"dicom-gateway: internal error: {type(exc).__name__}: {exc} "
              "(set DICOM_GATEWAY_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

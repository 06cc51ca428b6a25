"""The ``dicom-gateway`` command line.

Commands (a contract other tools and users rely on)::

    dicom-gateway serve --config FILE
    dicom-gateway check-config FILE
    dicom-gateway spool list|retry|purge --config FILE [...]
    dicom-gateway demo [--out DIR] [--serve]
    dicom-gateway protect --config FILE --profile NAME [--partner NAME] IN... --out DIR
    dicom-gateway train-surrogate --data PATH --arch NAME --out FILE [--task ...]
    dicom-gateway protect-dataset --method unlearnable --data PATH --out DIR

Errors are one line on stderr and a non-zero exit code (2: configuration, 1: anything else).
This is the boundary: a :class:`~dicom_gateway.errors.GatewayError` (every failure the gateway
raises on purpose, its message written for the user) or an ``OSError`` is printed as it is;
anything else is a bug, reported as an internal error. Set ``DICOM_GATEWAY_DEBUG=1`` to see a
traceback instead. ``verify`` and ``restore`` also exit 3 when nothing is invalid but
some instance is not sealed (:mod:`.seal.command`).
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
from .errors import ConfigError, DatasetError, DependencyError, GatewayError

if TYPE_CHECKING:
    from .spool import Entry

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_config
    from .gateway import Gateway

    config = load_config(args.config)
    _setup_logging(config.log_level)
    gateway = Gateway(config)
    try:
        gateway.start()
    except OSError as exc:
        gateway.stop()
        raise GatewayError(f"cannot start: {exc.strerror or exc}") from None
    except GatewayError:
        gateway.stop()
        raise

    def _term(signum: int, frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        gateway.request_stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    gateway.wait()
    gateway.stop()
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.file)
    if config.protection.device == "cuda":  # only this machine can answer that one
        from .protect.device import configure_for

        configure_for(config)
    print(f"{args.file}: OK: {len(config.partners)} partner(s), {len(config.routes)} route(s), "
          f"{len(config.profiles)} profile(s), no_route={config.no_route.action}")
    return 0


def _spool(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .config import load_config
    from .spool import Spool

    config = load_config(args.config)
    return Spool(config.gateway.spool_dir)


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
        if getattr(args, "older_than", None) and time.time() - entry.path.stat().st_mtime < args.older_than:
            continue
        yield group, entry


def _cmd_spool_retry(args: argparse.Namespace) -> int:
    spool = _spool(args)
    n = 0
    for group, entry in _selected(spool, args):
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
    for _, entry in _selected(spool, args):
        spool.purge(args.state, entry)
        n += 1
    print(f"purged {n} entr{'y' if n == 1 else 'ies'} from {args.state}/")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _setup_logging("WARNING" if not args.verbose else "INFO")
    return run_demo(Path(args.out), serve=args.serve, data_dir=args.data_dir, verbose=args.verbose)


def _cmd_protect(args: argparse.Namespace) -> int:
    from .config import load_config
    from .protect.offline import protect_files

    config = load_config(args.config)
    if args.profile not in config.profiles:
        raise ConfigError(args.config, "profiles", f"no profile named {args.profile!r}")
    if args.partner and args.partner not in config.partners:
        raise ConfigError(args.config, "partners", f"no partner named {args.partner!r}")
    written, problems = protect_files(config, args.profile, [Path(p) for p in args.inputs],
                                      Path(args.out), partner=args.partner)
    for problem in problems:
        print(f"dicom-gateway: not protected: {problem}", file=sys.stderr)
    print(f"{written} instance(s) protected with profile {args.profile!r} into {args.out}; "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_train_surrogate(args: argparse.Namespace) -> int:
    try:
        from .protect.surrogate import SEGMENTATION_ARCHITECTURES, load_surrogate
        from .protect.train import train_surrogate
    except ImportError as exc:
        raise DependencyError(f"train-surrogate needs torch ({exc}); run scripts/setup.sh"
                              ) from None
    arch = args.arch or ("unet-small" if args.task == "segmentation" else "auto")
    task = "segmentation" if arch in SEGMENTATION_ARCHITECTURES else "classification"
    if args.task and args.task != task:
        raise GatewayError(f"--arch {arch} is a {task} architecture, not {args.task}")
    adversarial = None  # train_surrogate's default: slightly robust for classifiers
    if args.adversarial_epsilon in ("0", "0/255", "0.0"):
        adversarial = 0.0
    elif args.adversarial_epsilon:
        from .protect.method import parse_epsilon

        try:
            adversarial = parse_epsilon(args.adversarial_epsilon)
        except ValueError as exc:
            raise GatewayError(f"--adversarial-epsilon: {exc}") from None
    data = Path(args.data)
    if not data.exists():
        raise GatewayError(f"{data}: no such file or folder")
    try:
        info = train_surrogate(data, arch, Path(args.out), epochs=args.epochs, seed=args.seed,
                               mask_suffix=args.mask_suffix, adversarial_epsilon=adversarial,
                               augment=args.augment, init=Path(args.init) if args.init else None,
                               max_images=args.max_images)
    except DatasetError as exc:
        raise DatasetError(f"{data}: cannot train on it: {exc}") from None
    sha = load_surrogate(Path(args.out)).sha256
    score = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in info.metrics.items())
    print(f"{args.out}: {info.arch} {info.input_size[0]}x{info.input_size[1]}x{info.channels}, "
          f"{len(info.classes)} classes, {score}, sha256 {sha}")
    return 0


# protect-dataset flags that are unlearnable profile keys: same units, and when left out the
# profile's defaults (DatasetJob's), so they are documented once, in docs/configuration.md
_PROFILE_FLAGS = ("epsilon", "rounds", "train_steps", "pgd_steps", "init")


def _epsilon(text: str) -> float:
    from .protect.method import parse_epsilon

    try:
        return parse_epsilon(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_protect_dataset(args: argparse.Namespace) -> int:
    try:
        from .protect.dataset_job import DatasetJob, protect_dataset
    except ImportError as exc:
        raise DependencyError(f"protect-dataset needs torch ({exc}); run scripts/setup.sh"
                              ) from None
    data = Path(args.data)
    if not data.exists():
        raise GatewayError(f"{data}: no such file or folder")
    if args.surrogate and not Path(args.surrogate).is_file():
        raise GatewayError(f"{args.surrogate}: no such surrogate file")
    given = {k: getattr(args, k) for k in _PROFILE_FLAGS if getattr(args, k) is not None}
    job = DatasetJob(data=data, out=Path(args.out), split=args.split,
                     surrogate=Path(args.surrogate) if args.surrogate else None, arch=args.arch,
                     mask_suffix=args.mask_suffix, seed=args.seed, **given)
    try:
        report = protect_dataset(job)
    except DatasetError as exc:
        raise DatasetError(f"{data}: cannot protect it: {exc}") from None
    loss = report["surrogate_final_loss"]
    print(f"{report['images']} {report['task']} images made unlearnable into {report['written']}: "
          f"PSNR {report['psnr_db']:.2f} dB, {report['rounds']} min-min rounds"
          + (f" (surrogate loss {loss:.4f})" if loss is not None else "")
          + f", {report['seconds']:.0f} s; report.json beside it")
    return 0


def _cmd_keys_init(args: argparse.Namespace) -> int:
    from .seal.keys import init_gateway_keys

    keys = init_gateway_keys(Path(args.out))
    print(f"gateway keys in {args.out}: gateway-signing.key and uid-secret.key (0600, keep "
          f"private), gateway-signing.pub (give to partners); key id {keys.key_id}")
    return 0


def _cmd_keys_partner(args: argparse.Namespace) -> int:
    from .seal.keys import new_partner_key

    key = new_partner_key(args.name, Path(args.out), args.suite)
    print(f"partner key {key.name} ({key.suite_name}) in {args.out}: {key.name}.key (0600, the "
          f"partner keeps it), {key.name}.pub (the gateway's 'key'); key id {key.key_id}")
    return 0


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

    pr = sub.add_parser("protect", help="protect files or folders with a profile (offline)")
    pr.add_argument("--config", required=True)
    pr.add_argument("--profile", required=True)
    pr.add_argument("--partner", help="the partner the output is for (used by the seal)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("inputs", nargs="+", help="DICOM files or folders")
    pr.set_defaults(func=_cmd_protect)

    t = sub.add_parser("train-surrogate", help="train a surrogate model for protection")
    t.add_argument("--data", required=True,
                   help="labelled images: .npz (MedMNIST layout), .h5 (images/labels masks), a "
                        "folder of class folders, or a folder of images with masks")
    t.add_argument("--arch", choices=["cnn-small", "resnet10", "resnet18", "unet-small"],
                   help="default: cnn-small below 64 px, resnet10 from 64 px up, or "
                        "unet-small with --task segmentation")
    t.add_argument("--out", required=True, help="surrogate file to write")
    t.add_argument("--task", choices=["classification", "segmentation"],
                   help="checked against the architecture (default: the architecture's task)")
    t.add_argument("--mask-suffix", default="_mask",
                   help="flat image folders: the mask of NAME.jpg is NAME<suffix>.png")
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--augment", choices=["auto", "light", "affine"], default="auto",
                   help="light: flip and 2-px shift; affine: random resized crop, flip, "
                        "rotation, intensity jitter; auto: affine from 64 px up")
    t.add_argument("--adversarial-epsilon",
                   help="train on FGSM examples within this budget (N/255 or a fraction; "
                        "default 1/255 for classifiers, 0 for segmenters; 0: off): slightly "
                        "robust surrogates transfer better (docs/protection.md)")
    t.add_argument("--init", help="start from this surrogate file's weights (fine-tuning)")
    t.add_argument("--max-images", type=int,
                   help="train on a seeded subset of this many training images (class "
                        "proportions kept), e.g. on a small CPU machine")
    t.set_defaults(func=_cmd_train_surrogate)

    pd = sub.add_parser("protect-dataset",
                        help="make a labelled dataset release unlearnable (method unlearnable)")
    pd.add_argument("--method", default="unlearnable", choices=["unlearnable"])
    pd.add_argument("--data", required=True, help="as for train-surrogate")
    pd.add_argument("--out", required=True, help="output folder (same layout + report.json)")
    pd.add_argument("--split", default="train", help="the .npz split to protect")
    pd.add_argument("--surrogate", help="starting surrogate file (default: a fresh --arch)")
    pd.add_argument("--arch", choices=["cnn-small", "resnet18", "unet-small"])
    same = " (as the unlearnable profile key, with its default: docs/configuration.md)"
    pd.add_argument("--epsilon", type=_epsilon,
                    help="L-inf budget: a fraction such as 0.0314, or N/255 such as 8/255" + same)
    pd.add_argument("--rounds", type=int, help="min-min rounds" + same)
    pd.add_argument("--train-steps", type=int, help="surrogate steps per round" + same)
    pd.add_argument("--pgd-steps", type=int, help="perturbation steps per round" + same)
    pd.add_argument("--init", choices=["pattern", "zero"],
                    help="segmentation start: the ROI/rim shortcut pattern or zero" + same)
    pd.add_argument("--mask-suffix", default="_mask")
    pd.add_argument("--seed", type=int, default=0)
    pd.set_defaults(func=_cmd_protect_dataset)

    k = sub.add_parser("keys", help="create gateway and partner keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    ki = ksub.add_parser("init", help="the gateway identity: signing key and UID secret")
    ki.add_argument("--out", required=True, help="folder (files are never overwritten)")
    ki.set_defaults(func=_cmd_keys_init)
    kp = ksub.add_parser("partner", help="an HPKE key pair for a partner")
    kp.add_argument("--name", required=True)
    kp.add_argument("--out", required=True)
    kp.add_argument("--suite", default="x25519", choices=["x25519", "mlkem768-x25519"])
    kp.set_defaults(func=_cmd_keys_partner)

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

    from .evaluation.command import add_parser as add_evaluate

    add_evaluate(sub)

    d = sub.add_parser("demo", help="run gateway + local partner and send a sample study")
    d.add_argument("--out", default="demo-out", help="where spool and partner output go")
    d.add_argument("--data-dir", default=os.environ.get("DICOM_GATEWAY_DATA"),
                   help="shared data directory (uses its real CT series when present)")
    d.add_argument("--serve", action="store_true", help="keep running after the study arrived")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return p


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

"""The ``dicom-gateway evaluate`` sub-command: options to :class:`.harness.Evaluation`.

``--profile`` names what to evaluate, repeatable: ``METHOD`` or
``METHOD:key=value,key=value`` (values parsed as YAML scalars, e.g.
``adversarial_perturbation:epsilon=0.0314,steps=20``), or, with ``--config``, the name of a
profile in the gateway's configuration (its method and settings; surrogates named there are
not used: the harness trains its own ensemble).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from ...errors import GatewayError
from ...protect.ensemble_folder import EnsembleFolderError, ensemble_files

__all__ = ["add_parser", "parse_profile"]

METHODS = ("adversarial_perturbation", "adversarial_watermark", "unlearnable")


def parse_profile(text: str, config: Path | None = None) -> tuple[str, str, dict[str, Any]]:
    """``(label, method, options)`` of one ``--profile``."""
    method, _, rest = text.partition(":")
    if config is not None and method not in METHODS:
        from ...config import load_config

        profiles = load_config(config).profiles
        if method not in profiles:
            raise GatewayError(f"{config}: no profile {method!r} (profiles: "
                               f"{', '.join(profiles)})")
        p = profiles[method]
        return text, p.method, {k: v for k, v in p.options.as_dict().items() if k != "surrogates"}
    if method not in METHODS:
        raise GatewayError(f"--profile {text!r}: unknown method (one of {', '.join(METHODS)}, "
                           "or a profile name with --config)")
    return text, method, _options(rest, f"--profile {text!r}")


def add_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="measure how well protection stops unauthorized models")
    e.add_argument("--dataset", required=True,
                   help="retinamnist, pneumoniamnist, chasedb1, msd-lung, or an .npz path "
                        "(MedMNIST layout)")
    e.add_argument("--data-dir", help="the shared data folder (default: $DICOM_GATEWAY_DATA "
                                      "or ../shared/data beside the checkout)")
    e.add_argument("--profile", action="append", default=[],
                   help="METHOD[:key=value,...] or a --config profile name; repeatable "
                        "(default: all three methods with their defaults); with "
                        "--surrogate-files: adversarial_watermark settings, one row each, "
                        "for the watermark's transfer study")
    e.add_argument("--config", help="gateway configuration whose profiles --profile names")
    e.add_argument("--out", required=True, help="report folder (report.md, results.json, PNGs)")
    e.add_argument("--cache", help="trained-model cache (default: OUT/cache)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--epochs", type=int, default=0,
                   help="training epochs per model (default: 10 for classification sets, 40 for "
                        "the segmentation sets)")
    e.add_argument("--victims", help="comma-separated black-box architectures")
    e.add_argument("--surrogates", help="comma-separated surrogate (white-box) architectures")
    e.add_argument("--watermark-images", type=int, default=100,
                   help="test images watermarked (the search runs per image)")
    e.add_argument("--removal-epochs", type=int, default=10,
                   help="the attacker's removal network against the watermark (0: none)")
    e.add_argument("--removal-images", type=int, default=500,
                   help="watermark transfer study: training images of the removal network")
    e.add_argument("--train-images", type=int, help="cap the training and validation splits")
    e.add_argument("--victim-recipe", choices=("practitioner", "light"), default="practitioner",
                   help="transfer study: how the victims are trained: practitioner (random "
                        "resized crop, flip, rotation, intensity jitter, ImageNet "
                        "normalization) or light (flip, 2-px shift)")
    e.add_argument("--test-images", type=int, help="cap the test split")
    e.add_argument("--surrogate-files",
                   help="comma-separated surrogate files (train-surrogate's output; a folder "
                        "train-surrogate --ensemble wrote stands for its files): run the "
                        "transfer study of adversarial_perturbation (or, with --profile, of "
                        "adversarial_watermark) through the gateway's code path with this "
                        "ensemble (docs/evaluation/README.md)")
    e.add_argument("--size", type=int, metavar="N",
                   help="transfer study: the images brought to N x N on load, as if stored "
                        "at that size (what the gateway protects)")
    e.add_argument("--victim-size", type=int, metavar="N",
                   help="transfer study: the partner's resolution: victims train on the "
                        "training images resized to N x N and resize what they are given "
                        "(the protected images at the stored size) the same way")
    e.add_argument("--budgets", default="2/255,4/255,8/255,16/255",
                   help="transfer study: the budgets of the frontier (N/255 or fractions)")
    e.add_argument("--attack", default="",
                   help="transfer study: attack options over the method's defaults, "
                        "key=value,... (e.g. steps=20,smoothing=7)")
    e.add_argument("--ablation", action="store_true",
                   help="transfer study: also measure each transfer lever (at --ablation-budget)")
    e.add_argument("--ablation-images", type=int, default=150)
    e.add_argument("--ablation-budget", default="8/255",
                   help="transfer study: the budget of the ablation (N/255 or a fraction)")
    e.add_argument("--ablation-lever", action="append", default=[], metavar="LABEL:K=V,...",
                   help="transfer study: a lever to measure at --ablation-budget, attack "
                        "options over the base ones (repeatable; e.g. 'TI 15 px:smoothing=15')")
    e.add_argument("--ablation-ensembles",
                   help="transfer study: other ensembles to compare at 8/255, files joined "
                        "by '+', ensembles by ',' (e.g. a.pt,a.pt+b.pt)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    e.set_defaults(func=run_command)


def _size(value: int | None, flag: str) -> int | None:
    if value is not None and not 8 <= value <= 4096:
        raise GatewayError(f"{flag} {value}: a side of 8 to 4096 pixels")
    return value


def _fraction(text: str) -> float:
    from ...protect.options import parse_epsilon

    try:
        return parse_epsilon(text.strip())
    except ValueError as exc:
        raise GatewayError(f"--budgets: {exc}") from None


def _options(text: str, where: str) -> dict[str, Any]:
    """``key=value,...`` with values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise GatewayError(f"{where}: expected key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (architectures)."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _lever(text: str) -> tuple[str, dict[str, Any]]:
    """``LABEL:key=value,...`` of ``--ablation-lever``."""
    label, colon, options = text.rpartition(":")
    if not colon or not label.strip():
        raise GatewayError(f"--ablation-lever {text!r}: expected LABEL:key=value,...")
    return label.strip(), _options(options, f"--ablation-lever {text!r}")


def _print_targets(targets: list[dict[str, Any]]) -> None:
    """One line per target: met or MISSED, the measured figure and its bound."""
    for t in targets:
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']} "
              f"(bound {t.get('direction', '<=')} {t['bound']})")


def _study(run: Any, study: Any) -> dict[str, Any]:
    """``run(study)``, its refusals as the command's, and where the report went."""
    try:
        results: dict[str, Any] = run(study)
    except ValueError as exc:
        raise GatewayError(f"evaluate: {exc}") from None
    print(f"{results['dataset']['name']}: report in {study.out / 'report.md'} "
          f"({results['wall_seconds']:.0f} s)")
    return results


def _run_transfer(args: argparse.Namespace) -> int:
    from .transfer import DEFAULT_ABLATION, TransferStudy, run_transfer

    named = tuple(Path(f.strip()) for f in args.surrogate_files.split(",") if f.strip())
    try:
        files = tuple(f for p in named for f in (ensemble_files(p) if p.is_dir() else (p,)))
    except EnsembleFolderError as exc:
        raise GatewayError(f"--surrogate-files: {exc}") from None
    for f in files:
        if not f.is_file():
            raise GatewayError(f"--surrogate-files: {f}: no such file")
    study = TransferStudy(
        dataset=args.dataset, out=Path(args.out), surrogate_files=files,
        budgets=tuple(_fraction(b) for b in args.budgets.split(",") if b.strip()),
        options=_options(args.attack, f"--attack {args.attack!r}"),
        ablation=[*(DEFAULT_ABLATION if args.ablation else []),
                  *(_lever(text) for text in args.ablation_lever)],
        ablation_images=args.ablation_images, ablation_budget=_fraction(args.ablation_budget),
        epochs=args.epochs or 4, seed=args.seed,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        cache=Path(args.cache) if args.cache else None, test_images=args.test_images,
        train_images=args.train_images, victim_recipe=args.victim_recipe,
        size=_size(args.size, "--size"), victim_size=_size(args.victim_size, "--victim-size"),
        progress=not args.quiet, command="dicom-gateway " + shlex.join(sys.argv[1:]))
    if args.ablation_ensembles:
        study.ablation_ensembles = tuple(
            tuple(Path(f) for f in group.split("+") if f)
            for group in args.ablation_ensembles.split(",") if group)
        for f in (f for group in study.ablation_ensembles for f in group):
            if not f.is_file():
                raise GatewayError(f"--ablation-ensembles: {f}: no such file")
    if args.victims:
        study.victims = _names(args.victims)
    if args.profile:
        return _run_watermark(args, study)
    results = _study(run_transfer, study)
    for row in results["frontier"]:
        print(f"  {row['epsilon_255']:g}/255: PSNR {row['psnr_db']} dB, black-box retained "
              f"skill {row['protected']['black_box_retained_skill']}")
    _print_targets(results["targets"])
    return 0


def _run_watermark(args: argparse.Namespace, base: Any) -> int:
    """The transfer study of ``adversarial_watermark``: one row per ``--profile``."""
    import dataclasses

    from .transfer_watermark import WatermarkStudy, run_watermark_transfer

    config = Path(args.config) if args.config else None
    profiles = []
    for text in args.profile:
        label, method, options = parse_profile(text, config)
        if method != "adversarial_watermark":
            raise GatewayError(f"--profile {text!r}: with --surrogate-files, --profile names "
                               "adversarial_watermark settings (the perturbation's study "
                               "takes --budgets and --attack)")
        profiles.append((label, {k: v for k, v in options.items() if k != "surrogates"}))
    if args.ablation or args.ablation_lever or args.ablation_ensembles or args.attack:
        raise GatewayError("--ablation*, --attack: the perturbation's transfer study only")
    study = WatermarkStudy(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                           profiles=profiles, removal_epochs=args.removal_epochs,
                           removal_images=args.removal_images)
    results = _study(run_watermark_transfer, study)
    for row in results["rows"]:
        print(f"  {row['label']}: PSNR {row['psnr_db']} dB, white-box accuracy "
              f"{row['protected']['white_box_accuracy']}, black-box retained skill "
              f"{row['protected']['black_box_retained_skill']}")
    _print_targets(results["targets"])
    return 0


def run_command(args: argparse.Namespace) -> int:
    try:
        from .harness import DEFAULT_METHODS, Evaluation, run_evaluation
    except ModuleNotFoundError as exc:  # the base install: no torch
        raise GatewayError(f"evaluate needs {exc.name}, which this install lacks: "
                           "pip install 'dicom-gateway[protect,eval]'") from None

    if args.surrogate_files:
        return _run_transfer(args)
    if args.size or args.victim_size:
        raise GatewayError("--size, --victim-size: the transfer study only (--surrogate-files)")
    config = Path(args.config) if args.config else None
    methods = ([parse_profile(p, config) for p in args.profile] if args.profile
               else list(DEFAULT_METHODS))
    ev = Evaluation(dataset=args.dataset, out=Path(args.out),
                    data_dir=Path(args.data_dir) if args.data_dir else None, methods=methods,
                    seed=args.seed, epochs=args.epochs,
                    watermark_images=args.watermark_images, removal_epochs=args.removal_epochs,
                    train_images=args.train_images, test_images=args.test_images,
                    cache=Path(args.cache) if args.cache else None, progress=not args.quiet,
                    command="dicom-gateway " + shlex.join(sys.argv[1:]))
    if args.victims:
        ev.victims = _names(args.victims)
    if args.surrogates:
        ev.surrogates = _names(args.surrogates)
    try:
        results = run_evaluation(ev)
    except ValueError as exc:
        raise GatewayError(f"evaluate: {exc}") from None
    met = sum(t["met"] for t in results["targets"])
    print(f"{results['dataset']['name']}: report in {ev.out / 'report.md'} "
          f"({met}/{len(results['targets'])} targets met, {results['wall_seconds']:.0f} s)")
    _print_targets(results["targets"])
    return 0

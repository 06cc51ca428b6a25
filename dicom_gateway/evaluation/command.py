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

from ..errors import GatewayError

__all__ = ["add_parser", "parse_profile"]

METHODS = ("adversarial_perturbation", "adversarial_watermark", "unlearnable")


def parse_profile(text: str, config: Path | None = None) -> tuple[str, str, dict[str, Any]]:
    """``(label, method, options)`` of one ``--profile``."""
    method, _, rest = text.partition(":")
    if config is not None and method not in METHODS:
        from ..config import load_config

        profiles = load_config(config).profiles
        if method not in profiles:
            raise GatewayError(f"{config}: no profile {method!r} (profiles: "
                               f"{', '.join(profiles)})")
        p = profiles[method]
        return text, p.method, {k: v for k, v in p.options.items() if k != "surrogates"}
    if method not in METHODS:
        raise GatewayError(f"--profile {text!r}: unknown method (one of {', '.join(METHODS)}, "
                           "or a profile name with --config)")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise GatewayError(f"--profile {text!r}: expected key=value, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return text, method, options


def add_parser(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="measure how well protection stops unauthorized models")
    e.add_argument("--dataset", required=True,
                   help="retinamnist, pneumoniamnist, chasedb1, msd-lung, or an .npz path "
                        "(MedMNIST layout)")
    e.add_argument("--data-dir", help="the shared data folder (default: $DICOM_GATEWAY_DATA "
                                      "or ../shared/data beside the checkout)")
    e.add_argument("--profile", action="append", default=[],
                   help="METHOD[:key=value,...] or a --config profile name; repeatable "
                        "(default: all three methods with their defaults)")
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
    e.add_argument("--removal-epochs", type=int, default=10)
    e.add_argument("--train-images", type=int, help="cap the training and validation splits")
    e.add_argument("--test-images", type=int, help="cap the test split")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    e.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        from .harness import DEFAULT_METHODS, Evaluation, run_evaluation
    except ModuleNotFoundError as exc:  # the base install: no torch
        raise GatewayError(f"evaluate needs {exc.name}, which this install lacks: "
                           "pip install 'dicom-gateway[protect,eval]'") from None

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
        ev.victims = tuple(v.strip() for v in args.victims.split(",") if v.strip())
    if args.surrogates:
        ev.surrogates = tuple(v.strip() for v in args.surrogates.split(",") if v.strip())
    try:
        results = run_evaluation(ev)
    except ValueError as exc:
        raise GatewayError(f"evaluate: {exc}") from None
    met = sum(t["met"] for t in results["targets"])
    print(f"{results['dataset']['name']}: report in {ev.out / 'report.md'} "
          f"({met}/{len(results['targets'])} targets met, {results['wall_seconds']:.0f} s)")
    for t in results["targets"]:
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']} "
              f"(bound {t['direction']} {t['bound']})")
    return 0

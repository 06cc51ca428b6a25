"""The lab's commands on the ``dicom-gateway`` command line: ``protect`` (a profile on files,
outside the gateway), ``train-surrogate``, ``protect-dataset`` and ``evaluate``.

Importing this module loads no torch: each command imports its lab module when it runs, and a
missing ``protect`` extra is one line (:class:`~dicom_gateway.errors.DependencyError`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DatasetError, DependencyError, GatewayError
from .evaluation.command import add_parser as add_evaluate

__all__ = ["add_parsers"]


def _cmd_protect(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .offline import protect_files

    config = load_config(args.config)
    if args.profile not in config.profiles:
        raise ConfigError(args.config, "profiles", f"no profile named {args.profile!r}")
    if args.partner and args.partner not in config.partners:
        raise ConfigError(args.config, "partners", f"no partner named {args.partner!r}")
    run = protect_files(config, args.profile, [Path(p) for p in args.inputs], Path(args.out),
                        partner=args.partner)
    for problem in run.problems:
        print(f"dicom-gateway: not protected: {problem}", file=sys.stderr)
    kept = f"; {run.kept} already there from an earlier run" if run.kept else ""
    print(f"{run.written} instance(s) protected with profile {args.profile!r} into {args.out}"
          f"{kept}; {len(run.problems)} problem(s)")
    return 1 if run.problems else 0


def _cmd_train_surrogate(args: argparse.Namespace) -> int:
    try:
        from ..protect.surrogate import SEGMENTATION_ARCHITECTURES, load_surrogate
        from .train import train_surrogate
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
        from ..protect.options import parse_epsilon

        try:
            adversarial = parse_epsilon(args.adversarial_epsilon)
        except ValueError as exc:
            raise GatewayError(f"--adversarial-epsilon: {exc}") from None
    data = Path(args.data)
    if not data.exists():
        raise GatewayError(f"{data}: no such file or folder")
    if args.size is not None and args.size < 8:
        raise GatewayError(f"--size {args.size}: the smallest training size is 8 px")
    if args.sizes is not None and not args.ensemble:
        raise GatewayError("--sizes: only with --ensemble (one surrogate: --size)")
    if args.ensemble:
        return _ensemble(args, data)
    if args.snapshots:
        return _snapshots(args, data, adversarial)
    try:
        info = train_surrogate(data, arch, Path(args.out), epochs=args.epochs, seed=args.seed,
                               mask_suffix=args.mask_suffix, adversarial_epsilon=adversarial,
                               augment=args.augment, init=Path(args.init) if args.init else None,
                               max_images=args.max_images, size=args.size)
    except DatasetError as exc:
        raise DatasetError(f"{data}: cannot train on it: {exc}") from None
    sha = load_surrogate(Path(args.out)).sha256
    score = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in info.metrics.items())
    print(f"{args.out}: {info.arch} {info.input_size[0]}x{info.input_size[1]}x{info.channels}, "
          f"{len(info.classes)} classes, {score}, sha256 {sha}")
    return 0


# train-surrogate flags that choose one surrogate's recipe: the ensemble's recipe is fixed
_ONE_SURROGATE = ("arch", "adversarial_epsilon", "init", "snapshots", "lr")


def _ensemble(args: argparse.Namespace, data: Path) -> int:
    """``train-surrogate --ensemble``: the recommended ensemble into the folder ``--out``."""
    from .ensemble import train_ensemble

    given = [f"--{k.replace('_', '-')}" for k in _ONE_SURROGATE if getattr(args, k)]
    if given or args.augment != "auto":
        raise GatewayError(f"--ensemble: the members' recipe is fixed; leave out "
                           f"{', '.join(given or ['--augment'])}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GatewayError(f"--ensemble: --out {out} is a file; name a folder")
    try:
        ensemble = train_ensemble(data, out, epochs=args.epochs, seed=args.seed,
                                  max_images=args.max_images, size=args.size,
                                  sizes=_sizes(args))
    except DatasetError as exc:
        raise DatasetError(f"{data}: cannot train the ensemble: {exc}") from None
    for name, entry in ensemble.members.items():
        scores = ", ".join(f"{v:.3f}" for v in entry["val_accuracy"] if v is not None)
        state = "trained" if name in ensemble.trained else "kept"
        print(f"{name}: {len(entry['files'])} file(s), val accuracy {scores} ({state})")
    files = ensemble.files(out)
    print(f"{len(ensemble.members)} members, {len(files)} surrogate files in {out} "
          f"(ensemble.json); in a profile, the folder (checked: complete, unchanged):")
    print(f"  surrogates: [{out}]")
    return 0


def _sizes(args: argparse.Namespace) -> tuple[int, ...]:
    """``--sizes 28,64`` as sizes (none when not given); one line naming the problem else."""
    if args.sizes is None:
        return ()
    if args.size is not None:
        raise GatewayError("--sizes: give --size or --sizes, not both")
    try:
        sizes = tuple(int(v) for v in args.sizes.split(","))
    except ValueError:
        raise GatewayError(f"--sizes {args.sizes}: sizes in pixels, e.g. 28,64") from None
    if len(set(sizes)) < 2 or min(sizes) < 8:
        raise GatewayError(f"--sizes {args.sizes}: two or more different sizes of at least "
                           f"8 px (one size: --size)")
    return sizes


def _snapshots(args: argparse.Namespace, data: Path, adversarial: float | None) -> int:
    """``train-surrogate --init FILE --snapshots N``: LGV snapshots of FILE (trained
    adversarially at FILE's recorded budget unless ``--adversarial-epsilon`` says)."""
    from .train import collect_snapshots

    if not args.init:
        raise GatewayError("--snapshots: give the trained surrogate to start from with --init")
    if args.snapshots < 1:
        raise GatewayError("--snapshots: at least one snapshot an epoch")
    try:
        files = collect_snapshots(data, Path(args.init), Path(args.out), epochs=args.epochs,
                                  per_epoch=args.snapshots, lr=args.lr, seed=args.seed,
                                  max_images=args.max_images, adversarial_epsilon=adversarial,
                                  size=args.size)
    except DatasetError as exc:
        raise DatasetError(f"{data}: cannot train on it: {exc}") from None
    print(f"{len(files)} snapshots: {', '.join(str(f) for f in files)}")
    return 0


# protect-dataset flags that are unlearnable profile keys: same units, and when left out the
# profile's defaults (DatasetJob's), so they are documented once, in docs/configuration.md
_PROFILE_FLAGS = ("epsilon", "rounds", "train_steps", "pgd_steps", "init")


def _epsilon(text: str) -> float:
    from ..protect.options import parse_epsilon

    try:
        return parse_epsilon(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_protect_dataset(args: argparse.Namespace) -> int:
    try:
        from .dataset_job import DatasetJob, protect_dataset
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


def add_parsers(sub: Any) -> None:
    """Add the lab's commands to the ``dicom-gateway`` sub-command parsers ``sub``."""
    _add_protect(sub)
    _add_train_surrogate(sub)
    _add_protect_dataset(sub)
    add_evaluate(sub)


def _add_protect(sub: Any) -> None:
    pr = sub.add_parser("protect", help="protect files or folders with a profile (offline)")
    pr.add_argument("--config", required=True)
    pr.add_argument("--profile", required=True)
    pr.add_argument("--partner", help="the partner the output is for (used by the seal)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("inputs", nargs="+", help="DICOM files or folders")
    pr.set_defaults(func=_cmd_protect)


def _add_train_surrogate(sub: Any) -> None:
    t = sub.add_parser("train-surrogate", help="train a surrogate model for protection")
    t.add_argument("--data", required=True,
                   help="labelled images: .npz (MedMNIST layout), .h5 (images/labels masks), a "
                        "folder of class folders, or a folder of images with masks")
    t.add_argument("--arch", choices=["cnn-small", "resnet10", "resnet18", "vit-tiny",
                                      "convnext-nano", "mobilenetv3-small", "efficientnet-b0",
                                      "densenet121", "unet-small"],
                   help="default: cnn-small below 64 px, resnet10 from 64 px up, or "
                        "unet-small with --task segmentation")
    t.add_argument("--out", required=True,
                   help="surrogate file to write (with --ensemble: the folder)")
    t.add_argument("--ensemble", action="store_true",
                   help="train the recommended ensemble for the data's image size into the "
                        "folder --out (several families, slightly robust members, LGV "
                        "snapshots; ensemble.json lists them; a rerun keeps what is done)")
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
    t.add_argument("--snapshots", type=int, default=0, metavar="N",
                   help="with --init: LGV, N weight snapshots an epoch for --epochs of SGD at "
                        "a constant --lr (default: the architecture's training rate, 2e-3 for "
                        "the CNNs) from the --init surrogate, written as "
                        "OUT-01.pt, OUT-02.pt, ...; adversarially at the --init file's "
                        "recorded budget unless --adversarial-epsilon says (docs/protection.md)")
    t.add_argument("--lr", type=float, help="with --snapshots: the constant learning rate")
    t.add_argument("--size", type=int, metavar="N",
                   help="train at N x N: the images reduced on load (antialiased, 8-bit), "
                        "e.g. 224 from radiographs of two thousand pixels; the gateway "
                        "reduces what it protects the same way for the surrogate, and the "
                        "protection stays at the stored resolution (default: as stored)")
    t.add_argument("--sizes", metavar="N,M,...",
                   help="with --ensemble: the recipe for the smallest size trained at it, "
                        "and two small CNNs at each other size (e.g. 28,64 for partners that "
                        "train at about 64x64: docs/protection.md)")
    t.set_defaults(func=_cmd_train_surrogate)


def _add_protect_dataset(sub: Any) -> None:
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

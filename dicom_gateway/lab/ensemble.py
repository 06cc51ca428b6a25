"""The recommended surrogate ensemble, trained by one command.

``dicom-gateway train-surrogate --data DATA --ensemble --out DIR`` trains, in order, the
members of :func:`recipe` for the data's image size into ``DIR`` and lists them in
``DIR/ensemble.json``: what each is, its validation accuracy, its files and their SHA-256.
A member whose files the manifest lists with the same settings and the same digests is kept
(a rerun after an interruption trains only what is missing; at 224x224 on a CPU the ensemble
takes hours). A folder that holds an ensemble trained with other settings is refused: one
folder, one ensemble. A profile names the folder (checked by
:mod:`dicom_gateway.protect.ensemble_folder`: every member of ``recipe``, files unchanged) or
lists its files (:meth:`Ensemble.files`).

The members are the evaluation's recommendation (``docs/protection.md``, decisions 0017,
0026 and 0034). From 64 px up: surrogates of several families, slightly robust (adversarial
training at 1/255, Springer et al., NeurIPS 2021) where that helped, and LGV weight snapshots
(Gubri et al., ECCV 2022) of the standard network. Below 64 px: six slightly robust copies of
the small CNN trained independently (seeds, and two augmentations), which transferred better
on thumbnails than other families or snapshots (the ensemble attack of Liu et al., ICLR 2017,
there over architectures, here over independent trainings of one).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..protect.ensemble_folder import MANIFEST
from ..protect.surrogate import load_surrogate
from .durable import write_durably
from .train import SLIGHTLY_ROBUST, collect_snapshots, image_size, train_surrogate

__all__ = ["Ensemble", "Member", "at_sizes", "recipe", "train_ensemble"]

SLIGHT = SLIGHTLY_ROBUST  # train-surrogate's default budget for classifiers
LGV_SNAPSHOTS = 4  # snapshots an epoch (decision 0026: four of one epoch)


@dataclass(frozen=True)
class Member:
    """One surrogate (or one set of LGV snapshots) of the ensemble."""

    name: str  # file stem in the folder
    arch: str
    adversarial_epsilon: float
    init: str | None = None  # the member this one starts from (fine-tuning, snapshots)
    epochs: int | None = None  # None: the run's epochs; fine-tunes and snapshots: 1
    snapshots: int = 0  # LGV snapshots an epoch (0: one trained surrogate)
    size: int | None = None  # the only input size the architecture takes (vit-tiny: 224)
    augment: str = "auto"  # train-surrogate --augment (light, affine, auto)
    seed: int = 0  # added to the run's --seed: independently trained copies of one recipe
    train_size: int | None = None  # trained at this size x size (None: the run's size)

    def files(self) -> list[str]:
        if not self.snapshots:
            return [f"{self.name}.pt"]
        return [f"{self.name}-{k:02d}.pt" for k in range(1, self.snapshots * (self.epochs or 1)
                                                          + 1)]


# from 64 px up: ResNet-10 (standard and slightly robust), a ViT and a ConvNeXt (the families
# the CNNs do not reach), four LGV snapshots of the standard ResNet-10
LARGE = (Member("resnet10", "resnet10", 0.0),
         Member("resnet10-adv1", "resnet10", SLIGHT, init="resnet10", epochs=1),
         Member("vit-tiny-adv1", "vit-tiny", SLIGHT, size=224),
         Member("convnext-nano-adv1", "convnext-nano", SLIGHT),
         Member("resnet10-lgv", "resnet10", 0.0, init="resnet10", epochs=1,
                snapshots=LGV_SNAPSHOTS))
# below 64 px (MedMNIST thumbnails): six slightly robust small CNNs trained independently
# (other seeds), four with the practitioner's augmentation and two with the light one
# (decision 0034: on thumbnails independent copies transfer better than other families or
# LGV snapshots of one network)
SMALL = (*(Member(f"cnn-small-affine-{k}", "cnn-small", SLIGHT, augment="affine", seed=k - 1)
           for k in range(1, 5)),
         *(Member(f"cnn-small-light-{k}", "cnn-small", SLIGHT, augment="light", seed=k - 1)
           for k in range(1, 3)))


# at each further size of ``--sizes``: two small CNNs trained there (decision 0038: against
# partners that train at 64x64, two 64x64 CNNs beside the thumbnail copies took 0.11-0.17 off
# the retained skill at 8/255 on two seed sets; two more thumbnail copies did not reliably)
PER_EXTRA_SIZE = 2


def at_sizes(sizes: tuple[int, ...]) -> tuple[Member, ...]:
    """The members for several training sizes: :func:`recipe` at the smallest, and
    :data:`PER_EXTRA_SIZE` slightly robust small CNNs (the practitioner's augmentation) at each
    other size, named ``cnn-small-<size>-<k>``."""
    first, *others = sorted(set(sizes))
    members = tuple(replace(m, train_size=first) for m in recipe(first, first))
    return members + tuple(
        Member(f"cnn-small-{n}-{k}", "cnn-small", SLIGHT, augment="affine", seed=k - 1,
               train_size=n)
        for n in others for k in range(1, PER_EXTRA_SIZE + 1))


def recipe(height: int, width: int) -> tuple[Member, ...]:
    """The members for images of ``height`` x ``width``; an architecture that takes one size
    only (the ViT: 224x224) is left out at any other."""
    members = SMALL if min(height, width) < 64 else LARGE
    return tuple(m for m in members if m.size is None or (height, width) == (m.size, m.size))


@dataclass
class Ensemble:
    """What ``ensemble.json`` holds: the settings and, per member, its files and scores."""

    settings: dict[str, Any]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipe: list[str] = field(default_factory=list)  # every member's name, trained or not
    trained: list[str] = field(default_factory=list)  # this run (not in the manifest)

    def files(self, folder: Path) -> list[Path]:
        return [folder / f for m in self.members.values() for f in m["files"]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(folder: Path, settings: dict[str, Any]) -> Ensemble:
    path = folder / MANIFEST
    if not path.is_file():
        return Ensemble(settings)
    try:
        raw = json.loads(path.read_text())
        ensemble = Ensemble(raw["settings"], dict(raw["members"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not an ensemble manifest ({exc})") from None
    if ensemble.settings != settings:
        raise DatasetError(f"{folder} holds an ensemble trained with other settings "
                           f"({ensemble.settings}); train into another folder")
    return ensemble


def _recorded(member: Member) -> dict[str, Any]:
    """``member`` as the manifest lists it (``train_size`` only when set, so that a folder
    trained before the field existed is still recognized)."""
    body = asdict(member)
    if body["train_size"] is None:
        del body["train_size"]
    return body


def _kept(folder: Path, entry: dict[str, Any] | None, member: Member) -> bool:
    """Whether ``member`` is done: listed with the same recipe and its files unchanged."""
    if entry is None or entry.get("member") != _recorded(member):
        return False
    return all((folder / f).is_file() and _sha256(folder / f) == entry["sha256"][f]
               for f in entry["files"])


def train_ensemble(data: Path, out: Path, epochs: int = 15, seed: int = 0,
                   max_images: int | None = None, progress: bool = True,
                   size: int | None = None, sizes: tuple[int, ...] = ()) -> Ensemble:
    """Train the members :func:`recipe` names for ``data`` into ``out`` (see the module);
    returns the ensemble, ``trained`` naming the members this call trained. ``size``: every
    member trained at ``size`` x ``size`` (:func:`~dicom_gateway.lab.train.at_size`), the
    recipe chosen for that size. ``sizes`` (instead of ``size``): :func:`at_sizes`, members
    at several sizes for partners that train at different resolutions."""
    if size is not None and sizes:
        raise DatasetError("give one training size or several, not both")
    height, width, task = image_size(data, seed, min(sizes) if sizes else size)
    if task != "classification":
        raise DatasetError("the ensemble is for classification data (a segmenter is one "
                           "surrogate: train-surrogate --task segmentation)")
    settings: dict[str, Any] = {"data": data.name, "size": [height, width], "epochs": epochs,
                                "seed": seed, "max_images": max_images}
    if sizes:
        settings["sizes"] = sorted(set(sizes))
    out.mkdir(parents=True, exist_ok=True)
    ensemble = _read(out, settings)
    members = at_sizes(sizes) if sizes else recipe(height, width)
    ensemble.recipe = [m.name for m in members]
    dropped = set(ensemble.members) - {m.name for m in members}
    for name in sorted(dropped):  # of an earlier recipe (an upgrade changed it)
        _say(progress, f"ensemble: {name}: not in this version's recipe, left out "
                       "(its files stay in the folder)")
        del ensemble.members[name]
    if dropped:
        _write(out, ensemble)
    for i, m in enumerate(members, 1):
        if _kept(out, ensemble.members.get(m.name), m):
            _say(progress, f"ensemble: {i}/{len(members)} {m.name}: kept from an earlier run")
            continue
        _say(progress, f"ensemble: {i}/{len(members)} {m.name} ({_what(m, epochs)})")
        init = out / f"{m.init}.pt" if m.init else None
        run_epochs = m.epochs or epochs
        if m.snapshots:
            assert init is not None
            collect_snapshots(data, init, out / f"{m.name}.pt", epochs=run_epochs,
                              per_epoch=m.snapshots, seed=seed, progress=progress,
                              max_images=max_images, adversarial_epsilon=m.adversarial_epsilon,
                              size=m.train_size or size)
        else:
            train_surrogate(data, m.arch, out / f"{m.name}.pt", epochs=run_epochs,
                            seed=seed + m.seed, progress=progress,
                            adversarial_epsilon=m.adversarial_epsilon, init=init,
                            max_images=max_images, augment=m.augment,
                            size=m.train_size or size)
        files = m.files()
        written = {f: load_surrogate(out / f) for f in files}
        ensemble.members[m.name] = {
            "member": _recorded(m), "files": files,
            "sha256": {f: s.sha256 for f, s in written.items()},
            "val_accuracy": [s.info.metrics.get("val_accuracy") for s in written.values()]}
        ensemble.trained.append(m.name)
        # a member that another starts from is retrained only with it: drop the dependants
        for later in members[i:]:
            if later.init == m.name:
                ensemble.members.pop(later.name, None)
        _write(out, ensemble)
    return ensemble


def _write(folder: Path, ensemble: Ensemble) -> None:
    body = {"settings": ensemble.settings, "recipe": ensemble.recipe,
            "members": ensemble.members}
    text = json.dumps(body, indent=2) + "\n"
    write_durably(lambda path: path.write_text(text), folder / MANIFEST)


def _what(m: Member, epochs: int) -> str:
    budget = f"at {round(m.adversarial_epsilon * 255)}/255" if m.adversarial_epsilon else "standard"
    if m.snapshots:
        return f"{m.snapshots} LGV snapshots an epoch of {m.init}, {m.epochs or epochs} epoch(s)"
    start = f" from {m.init}" if m.init else ""
    how = "" if m.augment == "auto" else f", {m.augment} augmentation"
    again = f", seed +{m.seed}" if m.seed else ""
    at = f", at {m.train_size}x{m.train_size}" if m.train_size else ""
    return f"{m.arch}, {m.epochs or epochs} epoch(s) {budget}{start}{how}{again}{at}"


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)

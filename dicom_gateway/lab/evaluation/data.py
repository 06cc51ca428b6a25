"""The evaluation's datasets by name or path, split into train / val / test.

Named sets are read from ``--data-dir`` (default ``../shared/data`` or ``$DICOM_GATEWAY_DATA``):

- ``retinamnist``, ``pneumoniamnist``: the MedMNIST ``.npz`` files (their own splits).
- ``chasedb1``: the fundus photos with the first observer's vessel masks, resized to
  ``size`` (default 128x128), split 20 / 4 / 4 by a seeded shuffle.
- ``kermany224``: the pediatric chest X-rays of Kermany et al. (Cell 2018) at 224x224, grey,
  normal / pneumonia, read from ``kermany_pneumonia_224.tar`` (or any split tree, folder or
  ``.tar``, given by path): the official test split; a seeded, stratified 10 % of the official
  train split for validation; byte-identical duplicates kept once.
- ``msd-lung``: the MSD lung tumour 48x48 patches; ``val_patches.h5`` is split 85 / 15 % into
  train / val, ``test_patches.h5`` is the test set.

Any other ``.npz`` with the MedMNIST layout is read by path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..datasets import ImageSet, load_images, load_split_tree, resize_images, stratified_split

__all__ = ["DATASETS", "Splits", "default_data_dir", "load_dataset"]

DATASETS = {
    "retinamnist": "medmnist/retinamnist.npz",
    "pneumoniamnist": "medmnist/pneumoniamnist_balanced.npz",
    "chasedb1": "segmentation/chasedb1",
    "msd-lung": "segmentation/msd_lung_2mm_patches",
    "kermany224": "classification/kermany_pneumonia_224/kermany_pneumonia_224.tar",
}


@dataclass
class Splits:
    name: str
    task: str  # classification | segmentation
    train: ImageSet
    val: ImageSet
    test: ImageSet
    source: str  # what was read, for the report
    digest: str  # SHA-256 over the files read: the cache key of everything trained on them

    @property
    def classes(self) -> int:
        return len(self.train.classes)

    @property
    def resolution(self) -> tuple[int, int]:
        return (int(self.train.images.shape[2]), int(self.train.images.shape[3]))

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])


def default_data_dir() -> Path:
    env = os.environ.get("DICOM_GATEWAY_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4] / "shared" / "data"


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _split(data: ImageSet, seed: int, val: int, test: int) -> tuple[ImageSet, ...]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return (data.subset(order[val + test:]), data.subset(order[:val]),
            data.subset(order[val:val + test]))


def load_dataset(name: str, data_dir: Path | None = None, seed: int = 0,
                 size: int = 128, resize: int | None = None) -> Splits:
    """The splits of a named set (under ``data_dir``) or of an ``.npz`` path; with ``resize``,
    a classification set's images brought to ``resize`` x ``resize``
    (:func:`~dicom_gateway.lab.datasets.resize_images`) as if stored at that size."""
    splits = _load(name, data_dir, seed, size)
    if resize is None or splits.resolution == (resize, resize):
        return splits
    if splits.task != "classification":
        raise ValueError(f"dataset {name}: resizing is for classification sets")
    for s in (splits.train, splits.val, splits.test):
        s.images = resize_images(s.images, resize)
    splits.source += f", resized to {resize}x{resize}"
    splits.digest += f"@{resize}"
    return splits


def _load(name: str, data_dir: Path | None, seed: int, size: int) -> Splits:
    data_dir = data_dir or default_data_dir()
    if name not in DATASETS:
        path = Path(name)
        if path.suffix == ".npz" and path.is_file():
            return _npz(path.stem, path)
        if (path.suffix == ".tar" and path.is_file()) or path.is_dir():
            return _tree(path.stem, path, seed)
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}, the "
                         "path of an .npz in the MedMNIST layout or of a split tree "
                         "({train,test}/<class>/*, folder or .tar)")
    path = data_dir / DATASETS[name]
    if not path.exists():
        raise ValueError(f"dataset {name}: {path} not found (set --data-dir or "
                         "DICOM_GATEWAY_DATA)")
    if name == "msd-lung":
        train_all = load_images(path / "val_patches.h5")
        held = max(1, len(train_all) * 15 // 100)
        order = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed))
        return Splits(name, "segmentation", train_all.subset(order[held:]),
                      train_all.subset(order[:held]), load_images(path / "test_patches.h5"),
                      f"{path}/{{val,test}}_patches.h5",
                      _digest([path / "val_patches.h5", path / "test_patches.h5"]))
    if name == "chasedb1":
        full = load_images(path, size=(size, size), mask_suffix="_1stHO")
        train, val, test = _split(full, seed, val=4, test=4)
        files = sorted(p for p in path.iterdir() if p.suffix in (".jpg", ".png"))
        return Splits(name, "segmentation", train, val, test, f"{path} at {size}x{size}",
                      _digest(files) + f"/{size}")
    if name == "kermany224":
        return _tree(name, path, seed)
    return _npz(name, path)


def _tree(name: str, path: Path, seed: int) -> Splits:
    splits = load_split_tree(path)
    if "train" not in splits or "test" not in splits:
        raise ValueError(f"dataset {name}: {path} needs train/ and test/ splits")
    train, val = (splits["train"], splits["val"]) if "val" in splits else stratified_split(
        splits["train"], 0.1, seed)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return Splits(name, "classification", train, val, splits["test"], str(path),
                  _digest(files))


def _npz(name: str, path: Path) -> Splits:
    train, val, test = (load_images(path, s) for s in ("train", "val", "test"))
    classes = max(len(train.classes), len(val.classes), len(test.classes))
    names = tuple(str(c) for c in range(classes))
    for s in (train, val, test):
        s.classes = names
    return Splits(name, "classification", train, val, test, str(path), _digest([path]))

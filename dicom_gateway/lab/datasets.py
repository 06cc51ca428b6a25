"""Labelled image sets for surrogate training and dataset protection, as float tensors.

Layouts read:

- ``.npz`` in the MedMNIST layout: ``{train,val,test}_images`` ``(N, H, W[, C])`` uint8 and
  ``*_labels`` ``(N, 1)``: classification.
- ``.h5`` / ``.hdf5`` with datasets ``images`` ``(N, C, H, W)`` float in [0, 1] and ``labels``
  ``(N, 1, H, W)`` in {0, 1} (the MSD lung patches): segmentation.
- a folder of class sub-folders (``DIR/<class>/*.png``): classification, class names sorted.
- a split tree, as a folder or a ``.tar``: ``[PREFIX/]{train,test[,val]}/<class>/*.jpeg``
  (the Kermany et al. chest X-ray layout): :func:`load_split_tree`, one :class:`ImageSet`
  per split, byte-identical files kept once, grey images (equal R, G and B) read as one
  channel.
- a folder with ``images/`` and ``masks/`` (files paired by stem), or a flat folder where the
  mask of ``NAME.jpg`` is ``NAME<mask_suffix>.png``: segmentation.

Images are ``(N, C, H, W)`` float32 in [0, 1]; labels int64 ``(N,)``; masks float32
``(N, 1, H, W)`` in {0, 1}. Folder images are resized to ``size`` (default: the first image's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError

__all__ = ["ImageSet", "load_images", "load_npz_split", "load_split_tree", "resize_images",
           "stratified_split"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class ImageSet:
    """One split: images with either class labels or masks."""

    images: torch.Tensor
    labels: torch.Tensor | None = None  # classification
    masks: torch.Tensor | None = None  # segmentation
    classes: tuple[str, ...] = ()

    @property
    def task(self) -> str:
        return "segmentation" if self.masks is not None else "classification"

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index],
                        None if self.labels is None else self.labels[index],
                        None if self.masks is None else self.masks[index], self.classes)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` in [0, 1] at ``size`` x ``size``, as an 8-bit image library
    resizes (antialiased bilinear, then rounded to 1/255): how a partner brings a release
    stored at one resolution to the one its model trains at (the MedMNIST thumbnails are such
    reductions of sources like the 224x224 chest X-rays)."""
    import torch.nn.functional as F

    if tuple(images.shape[2:]) == (size, size):
        return images
    out = torch.cat([F.interpolate(images[i:i + 256], size=(size, size), mode="bilinear",
                                   align_corners=False, antialias=True)
                     for i in range(0, len(images), 256)])
    return (out.clamp(0, 1) * 255).round() / 255


def load_npz_split(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float ``(N, C, H, W)`` in [0, 1] and labels as int64 ``(N,)``."""
    with np.load(path) as data:
        if f"{split}_images" not in data or f"{split}_labels" not in data:
            raise DatasetError(f"{path}: no split {split!r} ({split}_images, {split}_labels)")
        images = data[f"{split}_images"]
        labels = data[f"{split}_labels"].reshape(-1)
    if images.ndim == 3:
        images = images[..., None]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(labels.astype(np.int64))


def load_images(path: Path, split: str = "train", size: tuple[int, int] | None = None,
                mask_suffix: str = "_mask") -> ImageSet:
    """Read any supported layout (``split`` applies to ``.npz`` only)."""
    if path.suffix == ".npz":
        x, y = load_npz_split(path, split)
        return ImageSet(x, labels=y, classes=tuple(str(c) for c in range(int(y.max()) + 1)))
    if path.suffix in (".h5", ".hdf5"):
        return _load_h5(path)
    if path.suffix == ".tar" or (path.is_dir() and _split_dirs(path)):
        splits = load_split_tree(path)
        if split not in splits:
            raise DatasetError(f"{path}: no {split!r} split (found {', '.join(sorted(splits))})")
        return splits[split]
    if path.is_dir():
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return _load_pairs(sorted(_images_in(path / "images")),
                               lambda p: _find(path / "masks", p.stem), size)
        subdirs = sorted(d for d in path.iterdir() if d.is_dir())
        if subdirs:
            return _load_classes(subdirs, size)
        files = sorted(_images_in(path))
        stems = {p.stem for p in files}
        # an image is a file that is neither a mask nor another annotation of an image beside it
        # (CHASE_DB1 ships Image_01L.jpg with Image_01L_1stHO.png and Image_01L_2ndHO.png)
        images = [p for p in files if not p.stem.endswith(mask_suffix)
                  and not any(p.stem.startswith(o + "_") for o in stems if o != p.stem)]
        return _load_pairs(images, lambda p: _find(path, p.stem + mask_suffix), size)
    raise DatasetError(f"{path}: expected an .npz, an .h5 or a folder of images")


def _load_h5(path: Path) -> ImageSet:
    import h5py

    with h5py.File(path, "r") as f:
        if "images" not in f or "labels" not in f:
            raise DatasetError(f"{path}: expected HDF5 datasets 'images' and 'labels'")
        x = torch.from_numpy(np.asarray(f["images"], dtype=np.float32))
        m = torch.from_numpy((np.asarray(f["labels"]) > 0.5).astype(np.float32))
    if x.ndim == 3:
        x = x[:, None]
    if m.ndim == 3:
        m = m[:, None]
    return ImageSet(x.clamp(0, 1), masks=m, classes=("background", "foreground"))


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES]


def _find(folder: Path, stem: str) -> Path:
    for p in _images_in(folder):
        if p.stem == stem:
            return p
    raise DatasetError(f"{folder}: no mask named {stem}.* ")


def _read(path: Path, size: tuple[int, int] | None, mode: str | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as opened:
        img: Image.Image = opened.convert(mode) if mode else (
            opened if opened.mode in ("L", "RGB") else opened.convert("RGB"))
        if size and img.size != (size[1], size[0]):
            resample = Image.Resampling.NEAREST if mode == "L" else Image.Resampling.BILINEAR
            img = img.resize((size[1], size[0]), resample)
        arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _load_pairs(images: list[Path], mask_of: object, size: tuple[int, int] | None) -> ImageSet:
    if not images:
        raise DatasetError("no images found")
    first = _read(images[0], size)
    size = size or (first.shape[1], first.shape[2])
    xs = [_read(p, size) for p in images]
    ms = [_read(mask_of(p), size, "L") for p in images]  # type: ignore[operator]
    x = torch.from_numpy(np.stack(xs)).float() / 255.0
    m = (torch.from_numpy(np.stack(ms)) > 127).float()
    return ImageSet(x, masks=m, classes=("background", "foreground"))


def _load_classes(subdirs: list[Path], size: tuple[int, int] | None) -> ImageSet:
    files = [(p, label) for label, d in enumerate(subdirs) for p in sorted(_images_in(d))]
    if not files:
        raise DatasetError("no images found in the class folders")
    first = _read(files[0][0], size)
    size = size or (first.shape[1], first.shape[2])
    x = torch.from_numpy(np.stack([_read(p, size) for p, _ in files])).float() / 255.0
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageSet(x, labels=y, classes=tuple(d.name for d in subdirs))


_SPLITS = ("train", "val", "test")


def _split_dirs(path: Path) -> list[Path]:
    """The split folders of a split tree (``path`` itself or its one sub-folder)."""
    inner = [d for d in path.iterdir() if d.is_dir()]
    if len(inner) == 1 and not (path / "train").is_dir():
        path = inner[0]
    return [path / s for s in _SPLITS if (path / s).is_dir()]


def _tree_members(path: Path) -> list[tuple[str, str, bytes]]:
    """``(split, class, file bytes)`` for every image of a split tree, folder or tar."""
    out: list[tuple[str, str, bytes]] = []
    if path.suffix == ".tar":
        import tarfile

        with tarfile.open(path) as tar:
            for member in tar:
                parts = member.name.split("/")
                if (member.isfile() and len(parts) >= 3 and parts[-3] in _SPLITS
                        and Path(parts[-1]).suffix.lower() in _IMAGE_SUFFIXES):
                    handle = tar.extractfile(member)
                    assert handle is not None
                    out.append((parts[-3], parts[-2], handle.read()))
        return out
    for split_dir in _split_dirs(path):
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            out += [(split_dir.name, class_dir.name, p.read_bytes())
                    for p in sorted(_images_in(class_dir))]
    return out


def load_split_tree(path: Path) -> dict[str, ImageSet]:
    """Every split of a split tree. Class names are the sorted union of the class folders,
    so label numbers agree across splits; a file whose bytes were already read is skipped
    (the Kermany set ships 32 such pairs, each within one split and class)."""
    import hashlib
    import io

    from PIL import Image

    members = _tree_members(path)
    if not members:
        raise DatasetError(f"{path}: no images in a {{train,test}}/<class>/ layout")
    classes = tuple(sorted({c for _, c, _ in members}))
    seen: set[bytes] = set()
    arrays: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}
    for split, cls, data in members:
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"))
        arrays.setdefault(split, []).append(arr)
        labels.setdefault(split, []).append(classes.index(cls))
    grey = all(bool((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all())
               for split in arrays.values() for a in split)
    out = {}
    for split, items in arrays.items():
        stacked = np.stack([a[..., :1] if grey else a for a in items])
        x = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
        out[split] = ImageSet(x.float() / 255.0, labels=torch.tensor(labels[split]),
                              classes=classes)
    return out


def stratified_split(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """``(rest, held)``: a seeded ``fraction`` of each class held out (classification)."""
    assert data.labels is not None
    g = torch.Generator().manual_seed(seed)
    held: list[torch.Tensor] = []
    for c in data.labels.unique():
        index = (data.labels == c).nonzero().flatten()
        index = index[torch.randperm(len(index), generator=g)]
        held.append(index[:max(1, round(len(index) * fraction))])
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return data.subset(~mask), data.subset(mask)

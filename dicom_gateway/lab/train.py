"""``dicom-gateway train-surrogate``: train a surrogate classifier or segmenter on labelled
images (layouts in :mod:`.datasets`). With an ``.npz`` the ``train`` split is fitted and the
``val`` split picks the best epoch; other layouts hold out a seeded 15 % for validation. The
test split is never used here.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DatasetError
from ..protect.diversity import practitioner_augment
from ..protect.surrogate import (
    SEGMENTATION_ARCHITECTURES,
    SurrogateInfo,
    build_model,
    load_surrogate,
    save_surrogate,
    segmentation_loss,
)
from .datasets import (
    ImageSet,
    load_images,
    load_npz_split,
    load_split_tree,
    resize_images,
    stratified_split,
)

__all__ = ["LEARNING_RATES", "SLIGHTLY_ROBUST", "Augment", "accuracy", "at_size",
           "collect_snapshots", "describe", "dice", "fit", "image_size", "load_npz_split",
           "random_affine", "train_surrogate"]


def _augment(x: torch.Tensor, m: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Standard light augmentation, applied alike to masks: horizontal flip, shift <= 2 px."""
    flip = (torch.rand(x.shape[0]) < 0.5).view(-1, 1, 1, 1)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))

    def apply(t: torch.Tensor) -> torch.Tensor:
        return torch.roll(torch.where(flip, t.flip(3), t), shifts=(dy, dx), dims=(2, 3))
    return apply(x), None if m is None else apply(m)



@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / max(len(x), 1)


@torch.no_grad()
def dice(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, batch: int = 256) -> float:
    """Dice of the thresholded prediction over the whole set (pooled over all pixels)."""
    model.eval()
    inter = total = 0.0
    for i in range(0, len(x), batch):
        pred = (model(x[i:i + batch]) > 0).float()
        m = masks[i:i + batch]
        inter += float((pred * m).sum())
        total += float(pred.sum() + m.sum())
    return 2 * inter / total if total else 1.0


def _score(model: nn.Module, data: ImageSet) -> float:
    if data.masks is not None:
        return dice(model, data.images, data.masks)
    assert data.labels is not None
    return accuracy(model, data.images, data.labels)


# train-surrogate's default adversarial-training budget for classifiers: a slightly robust
# surrogate transfers better (Springer et al., NeurIPS 2021); measured on the 224x224 chest
# X-rays at 4/255: black-box retained skill 0.80 with a standard ResNet-10, 0.57 with the same
# network fine-tuned one epoch at 1/255
# (docs/evaluation/kermany224/ablation-ensembles-4of255/report.md)
SLIGHTLY_ROBUST = 1 / 255

Augment = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


# the augmentation a practitioner uses at 224 (random resized crop, flip, rotation, intensity
# jitter); the attack's ``transform: augment`` draws from the same function
random_affine: Augment = practitioner_augment


def _fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One FGSM step of 1.25 epsilon from a uniform random start, projected to the budget."""
    start = (x + torch.empty_like(x).uniform_(-epsilon, epsilon)).clamp(0, 1).requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(start), y), start)
    adv = start.detach() + 1.25 * epsilon * grad.sign()
    return (x + (adv - x).clamp(-epsilon, epsilon)).clamp(0, 1).detach()


def fit(model: nn.Module, data: ImageSet, epochs: int, val: ImageSet | None = None,
        seed: int = 0, batch: int = 64, lr: float = 2e-3, progress: bool = False,
        augment: bool | Augment = True, adversarial_epsilon: float = 0.0) -> float:
    """Train ``model`` in place (AdamW, one-cycle); with ``val``, keep the best epoch by
    accuracy or Dice and return that score, else return the score on ``data``.
    ``augment``: True for the light default (flip, shift <= 2 px), or a function.
    ``adversarial_epsilon`` > 0 trains on FGSM examples with a random start within that
    L-infinity budget (Wong et al. ICLR 2020), classification only: a small budget gives the
    "slightly robust" surrogates whose adversarial examples transfer best (Springer et al.,
    NeurIPS 2021)."""
    augmenter: Augment | None = _augment if augment is True else (augment or None)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * (
        (len(data) + batch - 1) // batch))
    best, best_state = -1.0, None
    started = time.monotonic()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data))
        for i in range(0, len(data), batch):
            idx = order[i:i + batch]
            masks = None if data.masks is None else data.masks[idx]
            x, masks = (augmenter(data.images[idx], masks) if augmenter
                        else (data.images[idx], masks))
            opt.zero_grad()
            if masks is not None:
                loss = segmentation_loss(model(x), masks)
            else:
                assert data.labels is not None
                if adversarial_epsilon > 0:
                    x = _fgsm_rs(model, x, data.labels[idx], adversarial_epsilon)
                loss = F.cross_entropy(model(x), data.labels[idx])
            loss.backward()
            opt.step()
            sched.step()
        if val is None:
            continue
        score = _score(model, val)
        if score > best:
            # a deep copy keeps the state dict's module versions, which some torchvision
            # modules (MNASNet) check when it is loaded back
            best, best_state = score, copy.deepcopy(model.state_dict())
        if progress:
            bar = "#" * (epoch + 1) + "." * (epochs - epoch - 1)
            name = "dice" if val.masks is not None else "acc"
            print(f"\r[{bar}] epoch {epoch + 1}/{epochs} val {name} {score:.3f} (best "
                  f"{best:.3f}) {time.monotonic() - started:.0f}s", end="", file=sys.stderr,
                  flush=True)
    if progress and val is not None:
        print(file=sys.stderr)
    if best_state is None:
        return _score(model, data)
    model.load_state_dict(best_state)
    return best


def _splits(data: Path, seed: int, mask_suffix: str, max_images: int | None = None,
            size: int | None = None) -> tuple[ImageSet, ImageSet]:
    """The training and validation splits; with ``max_images``, a seeded subset of that many
    training images (in the classes' proportions when there are labels); with ``size``, the
    images reduced (or enlarged) to ``size`` x ``size`` (:func:`at_size`)."""
    train, val = _all_splits(data, seed, mask_suffix)
    if max_images is not None and max_images < len(train):
        if train.labels is not None:
            train = stratified_split(train, max_images / len(train), seed + 1)[1]
        else:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
            train = train.subset(order[:max_images])
    if size is None:
        return train, val
    return at_size(train, size), at_size(val, size)


def at_size(data: ImageSet, size: int) -> ImageSet:
    """``data`` at ``size`` x ``size``: images as an 8-bit image library resizes them
    (:func:`~dicom_gateway.lab.datasets.resize_images`, antialiased bilinear, the reduction
    the gateway's view applies before a surrogate sees an image), masks by nearest
    neighbour."""
    import torch.nn.functional as F

    if size < 8:
        raise DatasetError(f"size {size}: the smallest training size is 8 px")
    masks = data.masks
    if masks is not None and tuple(masks.shape[2:]) != (size, size):
        masks = F.interpolate(masks, size=(size, size), mode="nearest")
    return ImageSet(resize_images(data.images, size), data.labels, masks, data.classes)


def _all_splits(data: Path, seed: int, mask_suffix: str) -> tuple[ImageSet, ImageSet]:
    if data.suffix == ".npz":
        return load_images(data, "train"), load_images(data, "val")
    if data.suffix == ".tar" or (data.is_dir() and (data / "train").is_dir()) or (
            data.is_dir() and any((d / "train").is_dir() for d in data.iterdir() if d.is_dir())):
        splits = load_split_tree(data)
        if "val" in splits:
            return splits["train"], splits["val"]
        return stratified_split(splits["train"], 0.1, seed)
    full = load_images(data, mask_suffix=mask_suffix)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    held = max(1, len(full) * 15 // 100)
    return full.subset(order[held:]), full.subset(order[:held])


def image_size(data: Path, seed: int = 0, size: int | None = None) -> tuple[int, int, str]:
    """``(height, width, task)`` of the training images of ``data`` (``size`` x ``size``
    when given)."""
    train, _ = _all_splits(data, seed, "_mask")
    if size is not None:
        return size, size, train.task
    return int(train.images.shape[2]), int(train.images.shape[3]), train.task


def describe(arch: str, train: ImageSet, classes: tuple[str, ...], trained_on: str = ""
             ) -> SurrogateInfo:
    """A new surrogate's description: its input as ``train`` shows it (size, channels, the
    per-channel mean and standard deviation it normalizes with) and its classes."""
    x = train.images
    return SurrogateInfo(arch=arch, task=train.task, input_size=(x.shape[2], x.shape[3]),
                         channels=x.shape[1], classes=classes,
                         mean=tuple(float(v) for v in x.mean(dim=(0, 2, 3))),
                         std=tuple(max(float(v), 1e-3) for v in x.std(dim=(0, 2, 3))),
                         trained_on=trained_on)


# the peak learning rate of the one-cycle schedule; a transformer trained from scratch on a
# few thousand images stayed at chance with the CNNs' 2e-3 (vit-tiny, 4 epochs) and learns at
# 5e-4, the rate the evaluation's ViT victim trains with; ConvNeXt at 1e-3, as its victim
LEARNING_RATES = {"vit-tiny": 5e-4, "convnext-nano": 1e-3}


def train_surrogate(data: Path, arch: str, out: Path, epochs: int = 15, seed: int = 0,
                    batch: int = 64, lr: float | None = None, progress: bool = True,
                    mask_suffix: str = "_mask", adversarial_epsilon: float | None = None,
                    augment: str = "auto", init: Path | None = None,
                    max_images: int | None = None, size: int | None = None) -> SurrogateInfo:
    """Train, keep the epoch with the best validation score, save; return the info.

    ``augment``: ``light`` (flip, shift <= 2 px), ``affine`` (:func:`random_affine`, what a
    practitioner uses at 224) or ``auto`` (``affine`` from 64 px up, else ``light``).
    ``adversarial_epsilon``: see :func:`fit` (classification only); ``None`` (the default):
    :data:`SLIGHTLY_ROBUST` for classification, 0 for segmentation. ``init``: a surrogate
    file of the same architecture and data shape to start from (fine-tuning, e.g. a few
    adversarial epochs on a surrogate already trained). ``max_images``: train on a seeded
    subset of that many training images (in the classes' proportions), for a small machine.
    ``size``: train at ``size`` x ``size`` (:func:`at_size`), e.g. 224 from radiographs
    stored at two thousand pixels a side; the gateway's view reduces what it protects the
    same way before the surrogate sees it."""
    train, val = _splits(data, seed, mask_suffix, max_images, size)
    if arch == "auto":
        arch = ("unet-small" if train.task == "segmentation" else
                "cnn-small" if min(train.images.shape[2:]) < 64 else "resnet10")
    segmentation = arch in SEGMENTATION_ARCHITECTURES
    if segmentation != (train.task == "segmentation"):
        task = "segmentation" if segmentation else "classification"
        raise DatasetError(f"architecture {arch} is for {task}"
                         f" but {data} holds {train.task} data")
    classes = train.classes or tuple(str(c) for c in range(int(max(
        train.labels.max(), val.labels.max())) + 1))  # type: ignore[union-attr]
    info = describe(arch, train, classes, trained_on=data.name)
    if augment == "auto":
        augment = "affine" if min(info.input_size) >= 64 else "light"
    if augment not in ("light", "affine"):
        raise DatasetError(f"unknown augmentation {augment!r} (known: light, affine, auto)")
    if adversarial_epsilon is None:
        adversarial_epsilon = 0.0 if segmentation else SLIGHTLY_ROBUST
    if adversarial_epsilon and segmentation:
        raise DatasetError("adversarial training is for classification surrogates")
    # torch seeds its default generator from the OS in each process: the weights' initial
    # values come from the seed too, so one command and seed make one file
    torch.manual_seed(seed)
    model = build_model(info)
    if init is not None:
        start = load_surrogate(init)
        if (start.info.arch, start.info.input_size, start.info.channels, start.info.classes) != (
                info.arch, info.input_size, info.channels, info.classes):
            raise DatasetError(f"--init {init}: a {start.info.arch} "
                             f"{start.info.input_size[0]}x{start.info.input_size[1]}x"
                             f"{start.info.channels} surrogate with classes "
                             f"{list(start.info.classes)}; this training needs {info.arch} "
                             f"{info.input_size[0]}x{info.input_size[1]}x{info.channels} "
                             f"with {list(info.classes)}")
        info = replace(info, mean=start.info.mean, std=start.info.std)
        model = build_model(info)
        model.load_state_dict(start.model.state_dict())
    lr = lr if lr is not None else LEARNING_RATES.get(arch, 2e-3)
    best = fit(model, train, epochs, val=val, seed=seed, batch=batch, lr=lr, progress=progress,
               augment=random_affine if augment == "affine" else True,
               adversarial_epsilon=adversarial_epsilon)
    key = "val_dice" if segmentation else "val_accuracy"
    info = replace(info, metrics={key: round(best, 4)}, training={
        "epochs": epochs, "seed": seed, "augment": augment,
        "adversarial_epsilon": round(adversarial_epsilon, 6), "images": len(train),
        **({"init": start.sha256} if init is not None else {}),
        **({"resized_to": size} if size is not None else {})})
    save_surrogate(model, info, out)
    return info


def collect_snapshots(data: Path, init: Path, out: Path, epochs: int = 2, per_epoch: int = 4,
                      lr: float | None = None, seed: int = 0, progress: bool = True,
                      max_images: int | None = None,
                      adversarial_epsilon: float | None = None,
                      size: int | None = None) -> list[Path]:
    """Large geometry vicinity (LGV; Gubri et al., "LGV: Boosting adversarial example
    transferability from large geometric vicinity", ECCV 2022): from the trained surrogate
    ``init``, SGD at a constant high learning rate ``lr`` (momentum 0.9, weight decay 1e-4)
    for ``epochs``, a snapshot of the weights taken ``per_epoch`` times an epoch, each written
    as a surrogate file ``<out stem>-NN.pt``. Attacking the snapshots together reaches models
    the single surrogate does not. Returns the files written.

    ``lr`` defaults to the peak rate the architecture trains with (:data:`LEARNING_RATES`,
    2e-3 for the CNNs), not LGV's 0.05: the surrogates here are trained with AdamW, and SGD
    at 0.05 or 0.01 sent a ResNet-10 on the 224x224 chest X-rays to always answering the
    minority class (validation accuracy 0.33-0.39), while 2e-3 kept 0.87-0.93.

    ``adversarial_epsilon``: each batch replaced by FGSM examples within that budget, as
    :func:`fit` does, so that the snapshots of a slightly robust surrogate stay slightly robust;
    ``None`` (the default): the budget ``init`` was trained at (its recorded recipe; 0 if none).
    ``size``: as for :func:`train_surrogate` (the size ``init`` was trained at).
    """
    start = load_surrogate(init)
    if adversarial_epsilon is None:
        adversarial_epsilon = float(start.info.training.get("adversarial_epsilon") or 0.0)
    if start.info.task != "classification":
        raise DatasetError("snapshots are for classification surrogates")
    train, val = _splits(data, seed, "_mask", max_images, size)
    if tuple(train.images.shape[2:]) != tuple(start.info.input_size):
        h, w = start.info.input_size
        raise DatasetError(f"--init {init} takes {h}x{w} images and the training images are "
                           f"{train.images.shape[2]}x{train.images.shape[3]}"
                           + (f"; train at its size: --size {h}" if h == w else ""))
    model = build_model(start.info)
    model.load_state_dict(start.model.state_dict())
    lr = lr if lr is not None else LEARNING_RATES.get(start.info.arch, 2e-3)
    augmenter = random_affine if min(start.info.input_size) >= 64 else _augment
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    batch = max(1, min(64, len(train) // per_epoch))  # a snapshot at least every batch
    batches = (len(train) + batch - 1) // batch
    marks = {round((k + 1) * batches / per_epoch) - 1 for k in range(per_epoch)}
    written: list[Path] = []
    started = time.monotonic()
    for epoch in range(epochs):
        order = torch.randperm(len(train))
        for b in range(batches):
            model.train()
            idx = order[b * batch:(b + 1) * batch]
            x, _ = augmenter(train.images[idx], None)
            assert train.labels is not None
            if adversarial_epsilon > 0:
                x = _fgsm_rs(model, x, train.labels[idx], adversarial_epsilon)
            opt.zero_grad()
            F.cross_entropy(model(x), train.labels[idx]).backward()
            opt.step()
            if b not in marks:
                continue
            target = out.with_name(f"{out.stem}-{len(written) + 1:02d}{out.suffix}")
            score = _score(model, val)
            save_surrogate(model, replace(start.info, metrics={"val_accuracy": round(score, 4)},
                                          training={"lgv": {"init": start.sha256, "lr": lr,
                                                            "epoch": epoch + 1, "seed": seed,
                                                            "snapshot": len(written) + 1},
                                                    "adversarial_epsilon":
                                                        round(adversarial_epsilon, 6),
                                                    "images": len(train)}), target)
            written.append(target)
            if progress:
                print(f"{target}: val accuracy {score:.3f} "
                      f"({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
    return written

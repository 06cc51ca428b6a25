"""``dicom-gateway train-surrogate``: train a surrogate classifier or segmenter on labelled
images (layouts in :mod:`.datasets`). With an ``.npz`` the ``train`` split is fitted and the
``val`` split picks the best epoch; other layouts hold out a seeded 15 % for validation. The
test split is never used here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DatasetError
from .datasets import ImageSet, load_images, load_npz_split
from .surrogate import SEGMENTATION_ARCHITECTURES, SurrogateInfo, build_model, save_surrogate

__all__ = ["accuracy", "dice", "fit", "load_npz_split", "segmentation_loss", "train_surrogate"]


def _augment(x: torch.Tensor, m: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Standard light augmentation, applied alike to masks: horizontal flip, shift <= 2 px."""
    flip = (torch.rand(x.shape[0]) < 0.5).view(-1, 1, 1, 1)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))

    def apply(t: torch.Tensor) -> torch.Tensor:
        return torch.roll(torch.where(flip, t.flip(3), t), shifts=(dy, dx), dims=(2, 3))
    return apply(x), None if m is None else apply(m)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Soft Dice + binary cross-entropy (the usual segmentation objective; UMed's too)."""
    prob = torch.sigmoid(logits)
    inter = (prob * masks).sum(dim=(1, 2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3)) + 1)
    return (1 - soft_dice).mean() + F.binary_cross_entropy_with_logits(logits, masks)


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


def fit(model: nn.Module, data: ImageSet, epochs: int, val: ImageSet | None = None,
        seed: int = 0, batch: int = 64, lr: float = 2e-3, progress: bool = False,
        augment: bool = True) -> float:
    """Train ``model`` in place (AdamW, one-cycle); with ``val``, keep the best epoch by
    accuracy or Dice and return that score, else return the score on ``data``."""
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
            x, masks = _augment(data.images[idx], masks) if augment else (data.images[idx], masks)
            opt.zero_grad()
            if masks is not None:
                loss = segmentation_loss(model(x), masks)
            else:
                assert data.labels is not None
                loss = F.cross_entropy(model(x), data.labels[idx])
            loss.backward()
            opt.step()
            sched.step()
        if val is None:
            continue
        score = _score(model, val)
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
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


def _splits(data: Path, seed: int, mask_suffix: str) -> tuple[ImageSet, ImageSet]:
    if data.suffix == ".npz":
        return load_images(data, "train"), load_images(data, "val")
    full = load_images(data, mask_suffix=mask_suffix)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    held = max(1, len(full) * 15 // 100)
    return full.subset(order[held:]), full.subset(order[:held])


def train_surrogate(data: Path, arch: str, out: Path, epochs: int = 15, seed: int = 0,
                    batch: int = 64, lr: float = 2e-3, progress: bool = True,
                    mask_suffix: str = "_mask") -> SurrogateInfo:
    """Train, keep the epoch with the best validation score, save; return the info."""
    train, val = _splits(data, seed, mask_suffix)
    segmentation = arch in SEGMENTATION_ARCHITECTURES
    if segmentation != (train.task == "segmentation"):
        raise DatasetError(f"architecture {arch} is for {'segmentation' if segmentation else 'classification'}"
                         f" but {data} holds {train.task} data")
    x = train.images
    classes = train.classes or tuple(str(c) for c in range(int(max(
        train.labels.max(), val.labels.max())) + 1))  # type: ignore[union-attr]
    mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in x.std(dim=(0, 2, 3)))
    info = SurrogateInfo(arch=arch, task=train.task, input_size=(x.shape[2], x.shape[3]),
                         channels=x.shape[1], classes=classes, mean=mean, std=std,
                         trained_on=data.name)
    model = build_model(info)
    best = fit(model, train, epochs, val=val, seed=seed, batch=batch, lr=lr, progress=progress)
    key = "val_dice" if segmentation else "val_accuracy"
    info = replace(info, metrics={key: round(best, 4)})
    save_surrogate(model, info, out)
    return info

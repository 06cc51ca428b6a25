"""``dicom-gateway train-surrogate``: train a surrogate classifier on labelled images.

Data: an ``.npz`` in the MedMNIST layout (``train_images``, ``train_labels``, ``val_*``,
``test_*``; images ``(N, H, W)`` or ``(N, H, W, C)`` uint8). The test split is never used here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .surrogate import SurrogateInfo, build_model, save_surrogate

__all__ = ["load_npz_split", "train_surrogate"]


def load_npz_split(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float ``(N, C, H, W)`` in [0, 1] and labels as int64 ``(N,)``."""
    with np.load(path) as data:
        images = data[f"{split}_images"]
        labels = data[f"{split}_labels"].reshape(-1)
    if images.ndim == 3:
        images = images[..., None]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(labels.astype(np.int64))


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Standard light augmentation: horizontal flip and a shift of up to 2 pixels."""
    flip = torch.rand(x.shape[0]) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / max(len(x), 1)


def train_surrogate(data: Path, arch: str, out: Path, epochs: int = 15, seed: int = 0,
                    batch: int = 64, lr: float = 2e-3, progress: bool = True) -> SurrogateInfo:
    """Train, keep the epoch with the best validation accuracy, save; return the info."""
    torch.manual_seed(seed)
    x, y = load_npz_split(data, "train")
    xv, yv = load_npz_split(data, "val")
    classes = tuple(str(c) for c in range(int(max(y.max(), yv.max())) + 1))
    mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in x.std(dim=(0, 2, 3)))
    info = SurrogateInfo(arch=arch, task="classification", input_size=(x.shape[2], x.shape[3]),
                         channels=x.shape[1], classes=classes, mean=mean, std=std,
                         trained_on=data.name)
    model = build_model(info)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * (
        (len(x) + batch - 1) // batch))
    loss_fn = nn.CrossEntropyLoss()
    best, best_state = -1.0, None
    started = time.monotonic()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            loss_fn(model(_augment(x[idx])), y[idx]).backward()
            opt.step()
            sched.step()
        val = accuracy(model, xv, yv)
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
        if progress:
            bar = "#" * (epoch + 1) + "." * (epochs - epoch - 1)
            print(f"\r[{bar}] epoch {epoch + 1}/{epochs} val acc {val:.3f} (best {best:.3f}) "
                  f"{time.monotonic() - started:.0f}s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    assert best_state is not None
    model.load_state_dict(best_state)
    info = replace(info, metrics={"val_accuracy": round(best, 4)})
    save_surrogate(model, info, out)
    return info

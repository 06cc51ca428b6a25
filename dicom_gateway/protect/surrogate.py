"""Surrogate models: the classifiers protection is optimized against, in a self-describing file.

A surrogate file (``torch.save``) holds the format tag, the architecture name, the task, the
input size and channels, the normalization, the class names, the weights, and is identified by
the SHA-256 of the file (recorded in each certificate). Models take images in ``[0, 1]``,
shape ``(N, C, H, W)`` at their input size; normalization is part of the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "Surrogate", "SurrogateInfo", "build_model", "load_surrogate",
           "save_surrogate"]

FORMAT = "dicom-gateway-surrogate/1"


@dataclass(frozen=True)
class SurrogateInfo:
    arch: str
    task: str  # "classification"
    input_size: tuple[int, int]
    channels: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    trained_on: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


class _Normalized(nn.Module):
    def __init__(self, body: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


def _small_cnn(channels: int, classes: int) -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))
    return nn.Sequential(block(channels, 32), block(32, 64), block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


def _resnet18(channels: int, classes: int) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=classes)
    model.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)  # small inputs: no 7x7/2 stem
    model.maxpool = nn.Identity()
    return model


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn-small": _small_cnn,
    "resnet18": _resnet18,
}


def build_model(info: SurrogateInfo) -> nn.Module:
    if info.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {info.arch!r} (known: {', '.join(ARCHITECTURES)})")
    return _Normalized(ARCHITECTURES[info.arch](info.channels, len(info.classes)), info.mean,
                       info.std)


@dataclass
class Surrogate:
    model: nn.Module
    info: SurrogateInfo
    sha256: str


def save_surrogate(model: nn.Module, info: SurrogateInfo, path: Path) -> str:
    """Write the surrogate file; return its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "info": asdict(info), "state_dict": model.state_dict()}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_surrogate(path: Path, device: str = "cpu") -> Surrogate:
    """Load a surrogate file written by :func:`save_surrogate` (eval mode, on ``device``)."""
    data = path.read_bytes()
    blob: Any = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dicom-gateway surrogate file ({FORMAT})")
    raw = dict(blob["info"])
    raw["input_size"] = tuple(raw["input_size"])
    for key in ("classes", "mean", "std"):
        raw[key] = tuple(raw[key])
    info = SurrogateInfo(**raw)
    model = build_model(info)
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    return Surrogate(model, info, hashlib.sha256(data).hexdigest())

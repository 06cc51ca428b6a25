"""Surrogate models: the classifiers protection is optimized against, in a self-describing file.

A surrogate file (``torch.save``) holds the format tag, the architecture name, the task, the
input view it was trained in (intensity mapping, input size, channels, normalization), the
class names, the weights, and is identified by
the SHA-256 of the file (recorded in each certificate). Models take images in ``[0, 1]``,
shape ``(N, C, H, W)`` at their input size; normalization is part of the model.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SurrogateError
from .declared_view import VIEW

__all__ = ["ARCHITECTURES", "SEGMENTATION_ARCHITECTURES", "Surrogate", "SurrogateInfo",
           "as_input", "build_model", "load_surrogate", "match_channels", "save_surrogate",
           "segmentation_loss", "torchvision_body"]

FORMAT = "dicom-gateway-surrogate/1"
# what torch and the description raise for a file that is not a usable surrogate
_UNUSABLE = (OSError, EOFError, pickle.UnpicklingError, RuntimeError, KeyError, TypeError,
             ValueError, AttributeError)


@dataclass(frozen=True)
class SurrogateInfo:
    arch: str
    task: str  # "classification" or "segmentation" (one foreground logit per pixel)
    input_size: tuple[int, int]
    channels: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    trained_on: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    # how stored pixel values became the [0, 1] training inputs; the gateway's view
    # (dicom_gateway.protect.view.VIEW) must be the same, else the file is refused at load
    view: str = VIEW
    training: dict[str, Any] = field(default_factory=dict)  # recipe, e.g. adversarial epsilon


class _Normalized(nn.Module):
    def __init__(self, body: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    mean: torch.Tensor  # buffers, set in __init__
    std: torch.Tensor

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


def _resnet10(channels: int, classes: int) -> nn.Module:
    """ResNet-10 (He et al. 2016; one BasicBlock per stage) with the ImageNet stem (7x7/2 and
    max-pool): the surrogate for 224x224 inputs, ~0.9 GFLOPs, trainable on a CPU."""
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)
    model.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    return model


class _Grey3(nn.Module):
    """Repeats a one-channel image to three channels for a model built for colour."""

    def __init__(self, body: nn.Module, channels: int) -> None:
        super().__init__()
        self.body, self.channels = body, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.expand(-1, 3, -1, -1) if self.channels == 1 else x)


def _vit_tiny(channels: int, classes: int) -> nn.Module:
    """A small vision transformer for 224x224 inputs (Dosovitskiy et al. 2021) with a
    convolutional stem (Xiao et al. 2021): 16x16 tokens, 4 layers, width 128, 4 heads. A
    surrogate of another family than the CNNs, for ensembles that transfer to models with
    patch-like stems."""
    from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

    stem = [ConvStemConfig(c, 3, 2) for c in (16, 32, 64, 128)]
    return _Grey3(VisionTransformer(image_size=224, patch_size=16, num_layers=4, num_heads=4,
                                    hidden_dim=128, mlp_dim=256, num_classes=classes,
                                    conv_stem_configs=stem), channels)


def _convnext_nano(channels: int, classes: int) -> nn.Module:
    """A small ConvNeXt for 224x224 inputs (Liu et al., CVPR 2022): 4x4 patchify stem,
    7x7 depthwise blocks with LayerNorm, widths 24-48-96-192, depths 1-1-2-1, ~0.6 M parameters.
    A surrogate of the family the other surrogates do not reach (decision 0017); layer scale
    0.1, not ImageNet's 1e-6, so that a few epochs from scratch move the blocks."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    blocks = [CNBlockConfig(24, 48, 1), CNBlockConfig(48, 96, 1), CNBlockConfig(96, 192, 2),
              CNBlockConfig(192, None, 1)]
    return _Grey3(ConvNeXt(blocks, stochastic_depth_prob=0.0, layer_scale=0.1,
                           num_classes=classes), channels)


class _AtLeast(nn.Module):
    """Upsamples (bilinear, antialiased) inputs whose shorter side is below ``size`` so that
    it is ``size``: ImageNet networks downsample 32 times, too much for a 28x28 thumbnail."""

    def __init__(self, body: nn.Module, size: int) -> None:
        super().__init__()
        self.body, self.size = body, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = min(x.shape[-2:])
        if short < self.size:
            x = F.interpolate(x, scale_factor=self.size / short, mode="bilinear",
                              align_corners=False, antialias=True)
        return self.body(x)


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    """A torchvision network of another family (MobileNet, EfficientNet, DenseNet), grey
    repeated to three channels, inputs below 64 px upsampled to 64 (as the evaluation's
    victims of these families see thumbnails)."""
    def make(channels: int, classes: int) -> nn.Module:
        return _Grey3(_AtLeast(torchvision_body(name, classes), 64), channels)
    return make


def torchvision_body(name: str, classes: int) -> nn.Module:
    """torchvision's ``name`` network, untrained, with ``classes`` outputs and batch-norm
    momentum 0.1 everywhere (MobileNetV3 ships 0.01, tuned for ImageNet's length: a few
    hundred steps leave its running statistics unusable, and eval mode then predicts one
    class)."""
    import torchvision.models as tv

    body: nn.Module = getattr(tv, name)(weights=None, num_classes=classes)
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return body


class _UNetSmall(nn.Module):
    """A three-level U-Net (Ronneberger et al. 2015), 16-32-64 channels, for small patches;
    outputs one logit per class channel (a single foreground logit for binary masks)."""

    def __init__(self, channels: int, outputs: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                 nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                 nn.BatchNorm2d(cout), nn.ReLU())
        self.enc1, self.enc2, self.enc3 = block(channels, 16), block(16, 32), block(32, 64)
        self.up2, self.dec2 = nn.ConvTranspose2d(64, 32, 2, 2), block(64, 32)
        self.up1, self.dec1 = nn.ConvTranspose2d(32, 16, 2, 2), block(32, 16)
        self.head = nn.Conv2d(16, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        e3 = self.enc3(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


def _unet_small(channels: int, classes: int) -> nn.Module:
    return _UNetSmall(channels, 1 if classes == 2 else classes)


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn-small": _small_cnn,
    "resnet18": _resnet18,
    "resnet10": _resnet10,
    "vit-tiny": _vit_tiny,
    "convnext-nano": _convnext_nano,
    "mobilenetv3-small": _torchvision("mobilenet_v3_small"),
    "efficientnet-b0": _torchvision("efficientnet_b0"),
    "densenet121": _torchvision("densenet121"),
    "unet-small": _unet_small,
}
SEGMENTATION_ARCHITECTURES = frozenset({"unet-small"})


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
    """Load a surrogate file written by :func:`save_surrogate`, or a user's TorchScript model
    (see :func:`_load_torchscript`), in eval mode on ``device``; raise
    :class:`~dicom_gateway.errors.SurrogateError` naming the file if it is neither."""
    try:
        data = path.read_bytes()
        if data[:2] == b"PK" and _is_torchscript(path):
            return _load_torchscript(path, data, device)
        with warnings.catch_warnings():  # torch warns about an odd pickle before failing on it
            warnings.simplefilter("ignore")
            blob: Any = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise SurrogateError(f"{path}: not a dicom-gateway surrogate file ({FORMAT}) "
                                 "nor a TorchScript model")
        info = _info(blob["info"])
        _check_view(path, info)
        model = build_model(info)
        model.load_state_dict(blob["state_dict"])
    except _UNUSABLE as exc:
        raise SurrogateError(f"{path}: not a usable surrogate file ({_why(exc)})") from None
    model.to(device).eval()
    return Surrogate(model, info, hashlib.sha256(data).hexdigest())


def _check_view(path: Path, info: SurrogateInfo) -> None:
    if info.view != VIEW:
        raise SurrogateError(f"{path}: trained in the input view {info.view!r}, but the gateway "
                             f"feeds surrogates {VIEW!r} (retrain it with train-surrogate)")


def _why(exc: BaseException) -> str:
    """One short line for the user (torch's own messages run over many lines)."""
    if isinstance(exc, (pickle.UnpicklingError, EOFError)):
        return "not a file torch.save wrote, or truncated or corrupt"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


def _info(raw_info: dict[str, Any]) -> SurrogateInfo:
    raw = dict(raw_info)
    raw["input_size"] = tuple(raw["input_size"])
    for key in ("classes", "mean", "std"):
        raw[key] = tuple(raw[key])
    return SurrogateInfo(**raw)


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _load_torchscript(path: Path, data: bytes, device: str) -> Surrogate:
    """A TorchScript model brought by the user. Its description (the :class:`SurrogateInfo`
    fields ``task``, ``input_size``, ``channels``, ``classes`` and optionally ``mean``/``std``,
    default: the model takes [0, 1] inputs itself) comes from the archive's extra file
    ``dicom-gateway.json`` or from a sidecar ``<file>.json``."""
    import json

    extra = {"dicom-gateway.json": ""}
    model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    text = extra["dicom-gateway.json"] or ""
    sidecar = path.with_suffix(".json")
    if not text and sidecar.is_file():
        text = sidecar.read_text()
    if not text:
        raise SurrogateError(f"{path}: TorchScript model without a description: add "
                         f"'dicom-gateway.json' as an extra file or write {sidecar.name}")
    raw = json.loads(text)
    missing = {"task", "input_size", "channels", "classes"} - set(raw)
    if missing:
        raise SurrogateError(f"{path}: description lacks {', '.join(sorted(missing))}")
    channels = int(raw["channels"])
    raw.setdefault("mean", [0.0] * channels)
    raw.setdefault("std", [1.0] * channels)
    raw.setdefault("arch", "torchscript")
    info = _info({k: raw[k] for k in SurrogateInfo.__dataclass_fields__ if k in raw})
    _check_view(path, info)
    wrapped = _Normalized(model, info.mean, info.std).to(device).eval()
    return Surrogate(wrapped, info, hashlib.sha256(data).hexdigest())


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Soft Dice + binary cross-entropy (the usual segmentation objective; UMed's too)."""
    prob = torch.sigmoid(logits)
    inter = (prob * masks).sum(dim=(1, 2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3)) + 1)
    return (1 - soft_dice).mean() + F.binary_cross_entropy_with_logits(logits, masks)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` (N, C, H, W) with ``channels`` channels: grey to colour by repetition, colour to
    grey by the mean, as a victim's preprocessing converts an image."""
    if x.shape[1] != channels and channels in (1, 3):
        x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    return x[:, :channels] if x.shape[1] > channels else x


def as_input(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """``x`` in [0, 1] as ``surrogate`` takes it: its channels, and its input size by an
    antialiased bilinear resize (as image libraries resize)."""
    x = match_channels(x, surrogate.info.channels)
    size = surrogate.info.input_size
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

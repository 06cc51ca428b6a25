"""The models of the evaluation: the unauthorized user's victims and the protection's
surrogates, trained here on the clean (or protected) training split and cached.

Every model takes images in [0, 1] at the data's resolution, ``(N, C, H, W)``; channel
adaptation (grey to RGB for ImageNet-style networks), the pipeline's resize and the
normalization by the training set's mean and std are part of it. Classification architectures:

==================  ==========================================================  ===========
name                what                                                        input
==================  ==========================================================  ===========
cnn-small           the gateway's surrogate (3 conv blocks, 32-64-128)          native
resnet18            torchvision ResNet-18, ImageNet stem                        native
mobilenetv3-small   torchvision MobileNetV3-Small                               64x64
shufflenetv2        torchvision ShuffleNetV2 x1.0                               64x64
efficientnet-b0     torchvision EfficientNet-B0                                 64x64
densenet121         torchvision DenseNet-121                                    64x64
vit-tiny            torchvision ViT, 4 layers, 4 heads, width 128, patch 4      native
plain-cnn           LeNet-style: 2 conv (5x5) + 2 fully connected, no BN        native
regnetx-400mf-64    torchvision RegNetX-400MF (third thumbnail panel)           64x64
squeezenet-64       torchvision SqueezeNet 1.1 (third thumbnail panel)          64x64
convnext-small-64   ConvNeXt 32-64-128-256 (third thumbnail panel)              64x64
mnasnet-64          torchvision MnasNet 0.5 (third thumbnail panel)             64x64
googlenet-64        torchvision GoogLeNet, no auxiliary heads (third panel)     64x64
==================  ==========================================================  ===========

The 224x224 architectures (``resnet10``, ``*-224``, ``*-small``, ``regnetx-400mf``) are
listed with :data:`ARCHITECTURES`.

Segmentation: ``unet-small`` (the gateway's) and ``fcn-small`` (dilated convolutions, no
skip connections). torchvision's batch-norm momentum is set to 0.1 everywhere (MobileNetV3
ships 0.01, which leaves the running statistics unusable after a few hundred steps: the model
then predicts one class in eval mode). Networks are trained from scratch (no weights can be
downloaded here; a user's fine-tuning from pretrained weights is not covered).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...protect.surrogate import ARCHITECTURES as SURROGATE_ARCHITECTURES
from ...protect.surrogate import SurrogateInfo, torchvision_body
from ..datasets import ImageSet
from ..durable import write_durably
from ..train import fit, random_affine

# part of every cache key: bump it when an architecture or the training changes
CACHE_VERSION = 2

__all__ = ["ARCHITECTURES", "CACHE_VERSION", "IMAGENET_MEAN", "IMAGENET_STD", "RECIPES",
           "SEGMENTATION", "Trained", "as_surrogate", "build", "train_cached"]


class _Pipeline(nn.Module):
    """Channels, resize and normalization in front of a body network."""

    def __init__(self, body: nn.Module, channels: int, want: int, size: int | None,
                 mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.body, self.channels, self.want, self.size = body, channels, want, size
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    mean: torch.Tensor  # buffers, set in __init__
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.want != self.channels:
            x = x.expand(-1, self.want, -1, -1) if self.channels == 1 else x.mean(1, True)
        if self.size is not None and x.shape[-1] < self.size:  # small inputs are upsampled
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.body(x)


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    def make(channels: int, classes: int) -> nn.Module:
        import torchvision.models as tv

        if name == "vit":
            return tv.VisionTransformer(image_size=28, patch_size=4, num_layers=4, num_heads=4,
                                        hidden_dim=128, mlp_dim=256, num_classes=classes)
        if name == "googlenet":  # no auxiliary heads: one output in training mode too
            return tv.googlenet(weights=None, num_classes=classes, aux_logits=False,
                                init_weights=True)
        return torchvision_body(name, classes)
    return make


def _small_224(name: str) -> Callable[[int, int], nn.Module]:
    """Networks for 224x224 inputs, narrowed where a 2-core CPU could not train the full
    width in reasonable time (the input stays 224)."""
    def make(channels: int, classes: int) -> nn.Module:
        import torchvision.models as tv
        from torchvision.models.convnext import CNBlockConfig

        if name == "vit":
            # a convolutional stem (Xiao et al., "Early convolutions help transformers see
            # better", NeurIPS 2021) in place of the 16x16 patchify: the plain ViT stayed at
            # chance after 3 epochs from scratch on 2,000 images
            from torchvision.models.vision_transformer import ConvStemConfig

            stem = [ConvStemConfig(c, 3, 2) for c in (24, 48, 96, 192)]
            return tv.VisionTransformer(image_size=224, patch_size=16, num_layers=6,
                                        num_heads=3, hidden_dim=192, mlp_dim=576,
                                        num_classes=classes, conv_stem_configs=stem)
        if name == "densenet":
            return tv.DenseNet(growth_rate=16, block_config=(4, 8, 12, 8),
                               num_init_features=32, num_classes=classes)
        if name == "convnext":
            # layer scale 0.1 instead of ImageNet's 1e-6: with a few hundred steps from
            # scratch, 1e-6 left the blocks near identity and the model at chance
            return tv.ConvNeXt([CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 2),
                                CNBlockConfig(128, 256, 4), CNBlockConfig(256, None, 2)],
                               stochastic_depth_prob=0.05, layer_scale=0.1,
                               num_classes=classes)
        if name == "resnet10":
            from torchvision.models.resnet import BasicBlock, ResNet
            return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)
        return _torchvision(name)(channels, classes)
    return make


def _plain_cnn(channels: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(20, 50, 5, padding=2), nn.ReLU(), nn.AdaptiveMaxPool2d(7),
                         nn.Flatten(), nn.Linear(50 * 49, 256), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(256, classes))


def _fcn_small(channels: int, classes: int) -> nn.Module:
    def conv(cin: int, cout: int, dilation: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*conv(channels, 32, 1), *conv(32, 32, 2), *conv(32, 64, 4),
                         *conv(64, 64, 8), *conv(64, 32, 1), nn.Conv2d(32, 1, 1))


@dataclass(frozen=True)
class Architecture:
    make: Callable[[int, int], nn.Module]
    channels: int | None  # what the body takes (None: the data's)
    size: int | None  # smaller inputs are resized up to this (None: native)
    description: str
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule


# ImageNet statistics: what a practitioner's torchvision pipeline normalizes with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


ARCHITECTURES: dict[str, Architecture] = {
    "cnn-small": Architecture(SURROGATE_ARCHITECTURES["cnn-small"], None, None,
                              "gateway surrogate CNN"),
    "resnet18": Architecture(_torchvision("resnet18"), 3, None, "ResNet-18 (torchvision)"),
    "mobilenetv3-small": Architecture(_torchvision("mobilenet_v3_small"), 3, 64,
                                      "MobileNetV3-Small at 64x64"),
    "shufflenetv2": Architecture(_torchvision("shufflenet_v2_x1_0"), 3, 64,
                                 "ShuffleNetV2 x1.0 at 64x64"),
    "densenet121": Architecture(_torchvision("densenet121"), 3, 64, "DenseNet-121 at 64x64"),
    "efficientnet-b0": Architecture(_torchvision("efficientnet_b0"), 3, 64,
                                    "EfficientNet-B0 at 64x64"),
    "vit-tiny": Architecture(_torchvision("vit"), 3, 28, "ViT 4x128, patch 4, at 28x28"),
    "plain-cnn": Architecture(_plain_cnn, None, None, "LeNet-style CNN"),
    # for 224x224 data (Kermany): distinct families, narrowed for a 2-core CPU
    "resnet10": Architecture(_small_224("resnet10"), 3, None, "ResNet-10 (BasicBlock 1-1-1-1)"),
    "mobilenetv3-small-224": Architecture(_torchvision("mobilenet_v3_small"), 3, None,
                                          "MobileNetV3-Small (torchvision)"),
    "shufflenetv2-x0.5": Architecture(_torchvision("shufflenet_v2_x0_5"), 3, None,
                                      "ShuffleNetV2 x0.5 (torchvision)"),
    "regnetx-400mf": Architecture(_torchvision("regnet_x_400mf"), 3, None,
                                  "RegNetX-400MF (torchvision)"),
    "densenet-small": Architecture(_small_224("densenet"), 3, None,
                                   "DenseNet, growth 16, blocks 4-8-12-8"),
    "convnext-small": Architecture(_small_224("convnext"), 3, None,
                                   "ConvNeXt, widths 32-64-128-256, depths 2-2-4-2", lr=1e-3),
    "squeezenet-224": Architecture(_torchvision("squeezenet1_1"), 3, None,
                                   "SqueezeNet 1.1 (torchvision)", lr=1e-3),
    "vit-small": Architecture(_small_224("vit"), 3, None,
                              "ViT, conv stem to 16x16 tokens, 6 layers, width 192, 3 heads",
                              lr=5e-4),
    "efficientnet-b0-224": Architecture(_torchvision("efficientnet_b0"), 3, None,
                                        "EfficientNet-B0 (torchvision)"),
    # a third thumbnail panel (families neither the first two panels nor the surrogates hold),
    # to check the thumbnail defaults on architectures they were not chosen with
    "regnetx-400mf-64": Architecture(_torchvision("regnet_x_400mf"), 3, 64,
                                     "RegNetX-400MF at 64x64"),
    "squeezenet-64": Architecture(_torchvision("squeezenet1_1"), 3, 64, "SqueezeNet 1.1 at 64x64",
                                  lr=1e-3),
    "convnext-small-64": Architecture(_small_224("convnext"), 3, 64,
                                      "ConvNeXt, widths 32-64-128-256, at 64x64", lr=1e-3),
    "mnasnet-64": Architecture(_torchvision("mnasnet0_5"), 3, 64, "MnasNet 0.5 at 64x64"),
    "googlenet-64": Architecture(_torchvision("googlenet"), 3, 64,
                                 "GoogLeNet (Inception v1) at 64x64"),
    "unet-small": Architecture(SURROGATE_ARCHITECTURES["unet-small"], None, None,
                               "gateway U-Net (16-32-64)"),
    "fcn-small": Architecture(_fcn_small, None, None, "dilated FCN, no skips"),
}
SEGMENTATION = frozenset({"unet-small", "fcn-small"})
# the model family of the victims' and the surrogates' architectures: a victim of a family
# the protection's ensemble holds is not held out (the transfer study reports it apart)
FAMILIES = {"resnet10": "ResNet", "resnet18": "ResNet", "vit-tiny": "ViT", "vit-small": "ViT",
            "convnext-nano": "ConvNeXt", "convnext-small": "ConvNeXt",
            "shufflenetv2": "ShuffleNet", "shufflenetv2-x0.5": "ShuffleNet",
            "mobilenetv3-small": "MobileNet", "mobilenetv3-small-224": "MobileNet",
            "densenet121": "DenseNet", "densenet-small": "DenseNet",
            "efficientnet-b0": "EfficientNet", "efficientnet-b0-224": "EfficientNet",
            "regnetx-400mf": "RegNet", "squeezenet-224": "SqueezeNet",
            "regnetx-400mf-64": "RegNet", "squeezenet-64": "SqueezeNet",
            "convnext-small-64": "ConvNeXt", "mnasnet-64": "MnasNet", "googlenet-64": "Inception"}


def family(arch: str) -> str:
    """The family of ``arch`` (:data:`FAMILIES`; an unknown architecture is its own)."""
    return FAMILIES.get(arch, arch)
# the victims' training recipes, as the transfer report names them
RECIPES = {"light": "light recipe (flip, 2-px shift, the data's own normalization)",
           "practitioner": "practitioner recipe (random resized crop, flip, rotation, "
                           "intensity jitter; ImageNet normalization for three-channel models)"}


def build(arch: str, data: ImageSet, imagenet_normalization: bool = False) -> nn.Module:
    """A fresh model of ``arch`` for ``data``, normalized by the data's statistics or, with
    ``imagenet_normalization`` (three-channel bodies), by ImageNet's as torchvision users do."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    a = ARCHITECTURES[arch]
    channels = int(data.images.shape[1])
    classes = 2 if data.task == "segmentation" else len(data.classes)
    want = a.channels or channels
    mean = data.images.mean(dim=(0, 2, 3))
    std = data.images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    if imagenet_normalization and want == 3:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    elif want != channels:
        mean, std = mean.mean().expand(want).clone(), std.mean().expand(want).clone()
    return _Pipeline(a.make(want, classes), channels, want, a.size, mean, std)


@dataclass
class Trained:
    arch: str
    model: nn.Module
    val_score: float
    cached: bool
    key: str


def train_cached(arch: str, data: ImageSet, val: ImageSet, epochs: int, seed: int,
                 cache: Path, tag: str, progress: bool = True,
                 trainer: Callable[[nn.Module], float] | None = None,
                 recipe: str = "light") -> Trained:
    """Train ``arch`` on ``data`` (best epoch by ``val``), or load it from ``cache`` when the
    same architecture, data, epochs, seed and ``tag`` were trained before. ``trainer``
    replaces :func:`fit` (for adversarial training). ``recipe``: ``light`` (flip and shift,
    the data's statistics: the 28x28 sets) or ``practitioner`` (random resized crop, flip,
    rotation and intensity jitter, ImageNet normalization: what a partner does at 224)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown training recipe {recipe!r} (known: {', '.join(RECIPES)})")
    h = hashlib.sha256()
    for t in (data.images, data.labels, data.masks):
        if t is not None:
            h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps([CACHE_VERSION, arch, epochs, seed, tag]
                        + ([] if recipe == "light" else [recipe])).encode())
    key = h.hexdigest()[:20]
    path = cache / f"{arch}-{key}.pt"
    practitioner = recipe == "practitioner"
    if path.is_file():
        model = build(arch, data, practitioner)
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
        model.eval()
        return Trained(arch, model, float(blob["val_score"]), True, key)
    torch.manual_seed(seed)
    model = build(arch, data, practitioner)
    score = trainer(model) if trainer else fit(
        model, data, epochs, val=val, seed=seed, progress=progress,
        lr=ARCHITECTURES[arch].lr, augment=random_affine if practitioner else True)
    model.eval()
    cache.mkdir(parents=True, exist_ok=True)
    write_durably(partial(torch.save, {"state_dict": model.state_dict(), "val_score": score}),
                  path)
    return Trained(arch, model, score, False, key)


@dataclass
class _AsSurrogate:
    model: nn.Module
    info: SurrogateInfo
    sha256: str


def as_surrogate(trained: Trained, data: ImageSet) -> _AsSurrogate:
    """A trained model in the shape the protection methods take (``.model``, ``.info``)."""
    x = data.images
    info = SurrogateInfo(trained.arch, data.task, (int(x.shape[2]), int(x.shape[3])),
                         int(x.shape[1]), data.classes, (0.0,) * x.shape[1], (1.0,) * x.shape[1])
    return _AsSurrogate(trained.model, info, trained.key)

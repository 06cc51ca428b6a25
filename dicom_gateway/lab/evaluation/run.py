"""One evaluation run's settings (:class:`Evaluation`, the CLI's options) and its shared state
(:class:`Run`: the splits, the white- and black-box models, the cache), with the test-time
defences every method's protected images face."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..datasets import ImageSet
from . import defences
from .data import Splits, load_dataset
from .scoring import cap, chance, score_all, summary
from .victims import SEGMENTATION, Trained, train_cached

__all__ = ["CLASSIFICATION_EPOCHS", "DEFAULT_METHODS", "SEGMENTATION_EPOCHS", "Evaluation", "Run",
           "attack_defences", "log"]

# (label, method, options): the label names the result (a method may be run twice)
DEFAULT_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("adversarial_perturbation", "adversarial_perturbation", {"epsilon": 8 / 255, "steps": 20}),
    ("adversarial_watermark", "adversarial_watermark", {}),
    ("unlearnable", "unlearnable", {"epsilon": 8 / 255}),
]


@dataclass
class Evaluation:
    """The settings of one run (the CLI's options)."""

    dataset: str
    out: Path
    data_dir: Path | None = None
    methods: list[tuple[str, str, dict[str, Any]]] = field(
        default_factory=lambda: list(DEFAULT_METHODS))
    seed: int = 0
    epochs: int = 0  # 0: by task (CLASSIFICATION_EPOCHS or SEGMENTATION_EPOCHS)
    victims: tuple[str, ...] = ("mobilenetv3-small", "shufflenetv2", "efficientnet-b0",
                                "densenet121", "vit-tiny", "plain-cnn")
    surrogates: tuple[str, ...] = ("cnn-small", "resnet18")
    unlearnable_victims: tuple[str, ...] | None = None  # default: surrogates[0] + victims
    defence_victim: str | None = None  # training-time defences; default: the first victim
    watermark_images: int = 100
    removal_epochs: int = 10
    train_images: int | None = None  # caps, for tiny runs
    test_images: int | None = None
    cache: Path | None = None  # default: <out>/cache
    progress: bool = True
    command: str = ""


def log(ev: Evaluation, msg: str) -> None:
    if ev.progress:
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


# Default training length: the segmentation sets are small (111 MSD lung training patches), and
# 10 epochs left a unet-small at 0.17 test Dice; 40 reach the 0.5-0.6 the protection tests see.
CLASSIFICATION_EPOCHS = 10
SEGMENTATION_EPOCHS = 40


class Run:
    def __init__(self, ev: Evaluation) -> None:
        self.ev = ev
        self.cache = ev.cache or ev.out / "cache"
        splits = load_dataset(ev.dataset, ev.data_dir, seed=ev.seed)
        splits.train = cap(splits.train, ev.train_images, ev.seed)
        splits.val = cap(splits.val, ev.train_images, ev.seed)
        splits.test = cap(splits.test, ev.test_images, ev.seed)
        self.splits: Splits = splits
        self.segmentation = splits.task == "segmentation"
        if ev.epochs <= 0:
            ev.epochs = SEGMENTATION_EPOCHS if self.segmentation else CLASSIFICATION_EPOCHS
        if self.segmentation:
            self.white: tuple[str, ...] = ()
            self.black = tuple(a for a in (*ev.surrogates, *ev.victims) if a in SEGMENTATION) or (
                "unet-small", "fcn-small")
        else:
            self.white = tuple(a for a in ev.surrogates if a not in SEGMENTATION)
            self.black = tuple(a for a in ev.victims if a not in SEGMENTATION
                               and a not in self.white)
        self.examples: dict[str, dict[str, torch.Tensor]] = {}

    def train(self, arch: str, data: ImageSet, val: ImageSet, seed: int, tag: str,
              trainer: Any = None) -> Trained:
        started = time.monotonic()
        t = train_cached(arch, data, val, self.ev.epochs, seed, self.cache, tag,
                         progress=self.ev.progress, trainer=trainer)
        how = "from cache" if t.cached else f"trained in {time.monotonic() - started:.0f}s"
        log(self.ev, f"{arch} ({tag}): val {t.val_score:.3f} {how}")
        return t

    def clean_models(self) -> dict[str, Trained]:
        s, ev = self.splits, self.ev
        models = {a: self.train(a, s.train, s.val, ev.seed + 1000 + i, "surrogate")
                  for i, a in enumerate(self.white)}
        models.update({a: self.train(a, s.train, s.val, ev.seed + i, "victim")
                       for i, a in enumerate(self.black)})
        return models


def attack_defences(run: Run, models: dict[str, Trained], protected: torch.Tensor,
                     original: torch.Tensor, data: ImageSet,
                     clean: dict[str, float]) -> dict[str, Any]:
    """Each test-time defence on the protected images; ratios are to the clean accuracy
    without the defence (``on_clean``: the defence's own cost on clean images)."""
    out: dict[str, Any] = {}
    for name, transform in defences.TEST_TIME.items():
        scores = score_all(models, transform(protected), data)
        out[name] = {**summary(scores, clean, run.white, run.black, chance(data)),
                     "on_clean": score_all(models, transform(original), data)}
    return out

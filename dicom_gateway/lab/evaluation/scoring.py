"""Scores of the evaluation: accuracy or Dice per model, the summary of a protection's effect
(white- and black-box means, relative to clean, retained skill above chance), and the small
data helpers every method's run shares."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..datasets import ImageSet
from ..train import accuracy, dice
from .victims import Trained

__all__ = ["MIN_CLEAN_SKILL", "cap", "chance", "mean", "retained_skill", "rounded", "score",
           "score_all", "summary", "to_8bit"]


def cap(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(data):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.subset(order.sort().values)


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def score(model: nn.Module, images: torch.Tensor, data: ImageSet) -> float:
    if data.masks is not None:
        return dice(model, images, data.masks)
    assert data.labels is not None
    return accuracy(model, images, data.labels)


def score_all(models: dict[str, Trained], images: torch.Tensor, data: ImageSet) -> dict[str, float]:
    return {name: round(score(t.model, images, data), 4) for name, t in models.items()}


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def chance(data: ImageSet) -> float | None:
    """The accuracy of always answering the majority class (classification sets)."""
    if data.labels is None or not len(data.labels):
        return None
    return float(torch.bincount(data.labels).max()) / len(data.labels)


# A victim whose clean accuracy is less than this above chance has no skill to lose (the
# 224x224 ConvNeXt of a first run sat 0.007 above it): its retained skill is None and it is
# left out of the means. Set before the seven-victim run.
MIN_CLEAN_SKILL = 0.10


def retained_skill(accuracy: float, clean: float | None, chance: float | None
                   ) -> float | None:
    """(accuracy - chance) / (clean - chance): 1 keeps the clean model's skill, 0 is guessing
    (the majority class), negative is below guessing; None where there is no skill to lose
    (no chance level, as for segmentation, or a clean model less than
    :data:`MIN_CLEAN_SKILL` above chance)."""
    if chance is None or clean is None or clean - chance < MIN_CLEAN_SKILL:
        return None
    return (accuracy - chance) / (clean - chance)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def summary(scores: dict[str, float], clean: dict[str, float], white: tuple[str, ...],
             black: tuple[str, ...], chance: float | None = None) -> dict[str, Any]:
    def rel(names: tuple[str, ...]) -> float | None:
        c = [clean[n] for n in names if n in scores]
        p = [scores[n] for n in names if n in scores]
        return round(sum(p) / sum(c), 4) if c and sum(c) > 0 else None
    out: dict[str, Any] = {
        "per_victim": scores,
        "white_box_mean": mean([scores[n] for n in white if n in scores]),
        "black_box_mean": mean([scores[n] for n in black if n in scores]),
        "white_box_relative": rel(white), "black_box_relative": rel(black)}
    if chance is not None:  # retained skill: (acc - chance) / (clean - chance), per victim
        skill = {n: rounded(retained_skill(scores[n], clean.get(n), chance)) for n in scores}
        out["chance"] = round(chance, 4)
        out["retained_skill"] = skill
        out["black_box_retained_skill"] = mean([v for n, v in skill.items()
                                                if n in black and v is not None])
    return out

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

__all__ = ["cap", "chance", "mean", "score", "score_all", "summary", "to_8bit"]


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


def summary(scores: dict[str, float], clean: dict[str, float], white: tuple[str, ...],
             black: tuple[str, ...], chance: float | None = None) -> dict[str, Any]:
    def rel(names: tuple[str, ...]) -> float | None:
        c = [clean[n] for n in names if n in scores]
        p = [scores[n] for n in names if n in scores]
        return round(sum(p) / sum(c), 4) if c and sum(c) > 0 else None
    out = {"per_victim": scores,
           "white_box_mean": mean([scores[n] for n in white if n in scores]),
           "black_box_mean": mean([scores[n] for n in black if n in scores]),
           "white_box_relative": rel(white), "black_box_relative": rel(black)}
    if chance is not None:  # retained skill: (acc - chance) / (clean - chance), per victim
        skills = [(scores[n] - chance) / (clean[n] - chance) for n in black
                  if n in scores and clean.get(n, 0) - chance > 1e-9]
        out["chance"] = round(chance, 4)
        out["black_box_retained_skill"] = mean(skills)
    return out

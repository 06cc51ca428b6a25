"""The issue's targets an evaluation run measures, in retained skill: (accuracy - chance) /
(clean accuracy - chance), chance being the majority class of the test split (0: the model is
reduced to guessing; negative: pushed below it). The bounds are the 224x224 set's (decision
0010, issue 12), applied to every classification set except RetinaMNIST, whose clean models
are too close to chance to measure against (it stays runnable, without targets)."""

from __future__ import annotations

from typing import Any

__all__ = ["BOUNDS", "FILTERS", "UNTARGETED_SETS", "lookup", "strongest_filter", "targets"]

UNTARGETED_SETS = ("retinamnist",)
# (white-box accuracy, black-box retained skill) at the method's default budget
BOUNDS = {"adversarial_perturbation": (0.05, 0.20), "adversarial_watermark": (0.10, 0.30)}
# the test-time filters an attacker may try; the target is on the strongest of them
FILTERS = ("median3", "gaussian1", "resize_crop")


def lookup(d: dict[str, Any], *keys: str) -> Any:
    """``d[k1][k2]...``, or None where a key is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def strongest_filter(defences: dict[str, Any]) -> float | None:
    """The highest black-box retained skill over :data:`FILTERS` (the attacker's best)."""
    values = [lookup(defences, f, "black_box_retained_skill") for f in FILTERS]
    known = [v for v in values if v is not None]
    return max(known) if known else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets this run measures: name, measured, bound, direction, met, gap."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, bound: float, upper: bool = True,
            unit: str = "") -> None:
        if measured is None:
            return
        met = measured <= bound if upper else measured >= bound
        gap = measured - bound if upper else bound - measured
        out.append({"target": name, "measured": measured, "bound": bound,
                    "direction": "<=" if upper else ">=", "unit": unit, "met": bool(met),
                    "gap": round(max(gap, 0.0), 4)})

    name = results["dataset"]["name"]
    if results["metric"] == "accuracy" and name in UNTARGETED_SETS:
        return out
    for label, r in results["methods"].items():
        method = r.get("method", label)
        if method in BOUNDS:
            white, black = BOUNDS[method]
            add(f"{label}: white-box accuracy", lookup(r, "protected", "white_box_mean"), white)
            add(f"{label}: black-box retained skill",
                lookup(r, "protected", "black_box_retained_skill"), black)
        if method == "adversarial_perturbation":
            add(f"{label}: after JPEG q75, black-box retained skill",
                lookup(r, "defences", "jpeg75", "black_box_retained_skill"), 0.30)
            add(f"{label}: after the strongest of median, Gaussian, resize-crop",
                strongest_filter(r.get("defences", {})), 0.35)
        if method == "adversarial_watermark":
            add(f"{label}: after the removal network, black-box retained skill",
                lookup(r, "defences", "removal_network", "black_box_retained_skill"), 0.40)
            add(f"{label}: keep-out overlap (pixels)",
                float(r["keepout_overlap_pixels"]["total"]), 0.0)
        if method == "unlearnable" and results["metric"] == "dice":
            add(f"{label}: Dice of victims trained on protected data / clean",
                lookup(r, "trained_on_protected", "mean_relative"), 0.30)
        elif method == "unlearnable":
            add(f"{label}: retained skill of victims trained on the release",
                lookup(r, "trained_on_protected", "mean_retained_skill"), 0.15)
            skill = r.get("defences_retained_skill", {})
            victim = r.get("defence_victim")
            add(f"{label}: with JPEG q75 at training time",
                lookup(skill, "jpeg75_training", victim), 0.30)
            for defence, title in (("iss_jpeg10", "ISS (JPEG q10)"),
                                   ("iss_grayscale", "ISS (grayscale)"),
                                   ("adversarial_training", "adversarial training")):
                add(f"{label}: under {title}", lookup(skill, defence, victim), 0.50)
    return out

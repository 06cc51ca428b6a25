"""The evaluation run: train, protect, attack, measure; then :mod:`.report` writes it up.

Classification sets get all three methods; segmentation sets only ``unlearnable`` (the
others need a classifier to fool). Protection uses the gateway's own functions
(:func:`~dicom_gateway.protect.perturbation.attack`,
:func:`~dicom_gateway.protect.watermark.search_watermark`,
:func:`~dicom_gateway.protect.unlearnable.error_minimizing_noise`) on the images at their
native 8-bit depth, as the gateway stores them.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..protect.datasets import ImageSet
from ..protect.train import accuracy, dice
from . import defences
from .data import Splits, load_dataset
from .quality import psnr, ssim
from .victims import SEGMENTATION, Trained, as_surrogate, build, train_cached

__all__ = ["DEFAULT_METHODS", "Evaluation", "run_evaluation"]

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


def _log(ev: Evaluation, msg: str) -> None:
    if ev.progress:
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def _cap(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(data):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data.subset(order.sort().values)


def _8bit(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def _score(model: nn.Module, images: torch.Tensor, data: ImageSet) -> float:
    if data.masks is not None:
        return dice(model, images, data.masks)
    assert data.labels is not None
    return accuracy(model, images, data.labels)


def _scores(models: dict[str, Trained], images: torch.Tensor, data: ImageSet) -> dict[str, float]:
    return {name: round(_score(t.model, images, data), 4) for name, t in models.items()}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _chance(data: ImageSet) -> float | None:
    """The accuracy of always answering the majority class (classification sets)."""
    if data.labels is None or not len(data.labels):
        return None
    return float(torch.bincount(data.labels).max()) / len(data.labels)


def _summary(scores: dict[str, float], clean: dict[str, float], white: tuple[str, ...],
             black: tuple[str, ...], chance: float | None = None) -> dict[str, Any]:
    def rel(names: tuple[str, ...]) -> float | None:
        c = [clean[n] for n in names if n in scores]
        p = [scores[n] for n in names if n in scores]
        return round(sum(p) / sum(c), 4) if c and sum(c) > 0 else None
    out = {"per_victim": scores,
           "white_box_mean": _mean([scores[n] for n in white if n in scores]),
           "black_box_mean": _mean([scores[n] for n in black if n in scores]),
           "white_box_relative": rel(white), "black_box_relative": rel(black)}
    if chance is not None:  # retained skill: (acc - chance) / (clean - chance), per victim
        skills = [(scores[n] - chance) / (clean[n] - chance) for n in black
                  if n in scores and clean.get(n, 0) - chance > 1e-9]
        out["chance"] = round(chance, 4)
        out["black_box_retained_skill"] = _mean(skills)
    return out


# Default training length: the segmentation sets are small (111 MSD lung training patches), and
# 10 epochs left a unet-small at 0.17 test Dice; 40 reach the 0.5-0.6 the protection tests see.
CLASSIFICATION_EPOCHS = 10
SEGMENTATION_EPOCHS = 40


class _Run:
    def __init__(self, ev: Evaluation) -> None:
        self.ev = ev
        self.cache = ev.cache or ev.out / "cache"
        splits = load_dataset(ev.dataset, ev.data_dir, seed=ev.seed)
        splits.train = _cap(splits.train, ev.train_images, ev.seed)
        splits.val = _cap(splits.val, ev.train_images, ev.seed)
        splits.test = _cap(splits.test, ev.test_images, ev.seed)
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
        _log(self.ev, f"{arch} ({tag}): val {t.val_score:.3f} {how}")
        return t

    def clean_models(self) -> dict[str, Trained]:
        s, ev = self.splits, self.ev
        models = {a: self.train(a, s.train, s.val, ev.seed + 1000 + i, "surrogate")
                  for i, a in enumerate(self.white)}
        models.update({a: self.train(a, s.train, s.val, ev.seed + i, "victim")
                       for i, a in enumerate(self.black)})
        return models


def run_evaluation(ev: Evaluation) -> dict[str, Any]:
    """Run everything ``ev`` asks for; write the report; return the results."""
    from .report import write_report

    started = time.monotonic()
    torch.manual_seed(ev.seed)
    run = _Run(ev)
    s = run.splits
    _log(ev, f"{s.name}: {s.task}, train {len(s.train)}, val {len(s.val)}, test {len(s.test)}, "
             f"{s.resolution[0]}x{s.resolution[1]}x{s.channels}")
    models = run.clean_models()
    clean = _scores(models, s.test.images, s.test)
    results: dict[str, Any] = {
        "dataset": {"name": s.name, "task": s.task, "source": s.source, "sha256": s.digest,
                    "train": len(s.train), "val": len(s.val), "test": len(s.test),
                    "resolution": list(s.resolution), "channels": s.channels,
                    "classes": s.classes if not run.segmentation else 2},
        "settings": {"seed": ev.seed, "epochs": ev.epochs, "white_box": list(run.white),
                     "black_box": list(run.black), "methods": {label: {"method": m, "options": o}
                                                 for label, m, o in ev.methods},
                     "watermark_images": ev.watermark_images,
                     "removal_epochs": ev.removal_epochs, "train_images": ev.train_images,
                     "test_images": ev.test_images},
        "command": ev.command,
        "metric": "dice" if run.segmentation else "accuracy",
        "clean": {"per_victim": clean, "val": {n: round(t.val_score, 4) for n, t in models.items()},
                  "cached": {n: t.cached for n, t in models.items()}},
        "methods": {},
        "skipped": {},
    }
    for label, method, options in ev.methods:
        if run.segmentation and method != "unlearnable":
            results["skipped"][label] = "needs a classifier to fool: classification data only"
            continue
        _log(ev, f"method {label}")
        t0 = time.monotonic()
        if method == "adversarial_perturbation":
            r = _perturbation(run, models, clean, options)
        elif method == "adversarial_watermark":
            r = _watermark(run, models, options)
        elif method == "unlearnable":
            r = _unlearnable(run, clean, options)
        else:
            results["skipped"][label] = "unknown method"
            continue
        r["method"] = method
        r["wall_seconds"] = round(time.monotonic() - t0, 1)
        results["methods"][label] = r
        run.examples[label] = r.pop("_examples")
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    write_report(results, run.examples, ev.out)
    return results


def _attack_defences(run: _Run, models: dict[str, Trained], protected: torch.Tensor,
                     original: torch.Tensor, data: ImageSet,
                     clean: dict[str, float]) -> dict[str, Any]:
    """Each test-time defence on the protected images; ratios are to the clean accuracy
    without the defence (``on_clean``: the defence's own cost on clean images)."""
    out: dict[str, Any] = {}
    for name, transform in defences.TEST_TIME.items():
        scores = _scores(models, transform(protected), data)
        out[name] = {**_summary(scores, clean, run.white, run.black, _chance(data)),
                     "on_clean": _scores(models, transform(original), data)}
    return out


def _perturbation(run: _Run, models: dict[str, Trained], clean: dict[str, float],
                  options: dict[str, Any]) -> dict[str, Any]:
    from ..protect.perturbation import _DEFAULTS, attack

    s = run.splits
    surrogates = [as_surrogate(models[a], s.train) for a in run.white]
    o = {**{k: v for k, v in _DEFAULTS.items() if k != "batch"}, "oracle_labels": False,
         **options}
    x = s.test.images
    # the gateway has no ground truth and moves away from the ensemble's prediction;
    # oracle_labels (evaluation only) moves away from the true label: an upper bound
    y = s.test.labels if o["oracle_labels"] else None
    t0 = time.monotonic()
    protected = torch.cat([attack(x[i:i + 64], surrogates, float(o["epsilon"]), int(o["steps"]),
                                  float(o["momentum"]), float(o["diversity"]), seed=run.ev.seed,
                                  labels=None if y is None else y[i:i + 64])
                           for i in range(0, len(x), 64)])
    seconds = time.monotonic() - t0
    protected = _8bit(protected)
    examples = {"original": x[:4], "protected": protected[:4]}
    scores = _scores(models, protected, s.test)
    return {"_examples": examples, "images": len(x), "options": o,
            "seconds_per_image": round(seconds / len(x), 4),
            "quality": {"psnr_db": round(psnr(x, protected), 2),
                        "ssim": round(ssim(x, protected), 4),
                        "max_abs_change_8bit": round(float((protected - x).abs().max()) * 255)},
            "protected": _summary(scores, clean, run.white, run.black, _chance(s.test)),
            "defences": _attack_defences(run, models, protected, x, s.test, clean)}


def _random_marks(images: torch.Tensor, logo: torch.Tensor, fraction: float,
                  seed: int) -> torch.Tensor:
    """The attacker's training pairs: the same kind of logo at random places, sizes (up to
    ``fraction`` of the area), opacities, angles and grey levels."""
    from ..protect.watermark import _render

    g = torch.Generator().manual_seed(seed)
    _, _, H, W = images.shape
    aspect = logo.shape[1] / logo.shape[0]
    h_max = min(math.sqrt(fraction * H * W / aspect), H, W / aspect)
    out = torch.empty_like(images)
    for i, img in enumerate(images):
        r = torch.rand(6, generator=g)
        h = h_max * (0.5 + 0.5 * float(r[2]))
        cand = torch.tensor([[float(r[0]) * (W - h * aspect), float(r[1]) * (H - h), h,
                              0.4 + 0.6 * float(r[3]), math.radians(30 * float(r[4]) - 15),
                              float(r[5] > 0.5)]])
        out[i] = _render(img, logo, cand)[0][0]
    return _8bit(out)


def _watermark(run: _Run, models: dict[str, Trained], options: dict[str, Any]) -> dict[str, Any]:
    from ..protect.watermark import (
        AdversarialWatermark,
        _box_area,
        gradcam_keepout,
        load_logo,
        search_settings,
        search_watermark,
    )

    s, ev = run.splits, run.ev
    o = {**AdversarialWatermark._DEFAULTS, **options}
    surrogates = [as_surrogate(models[a], s.train) for a in run.white]
    test = _cap(s.test, ev.watermark_images, ev.seed + 7)
    logo = load_logo(o["logo"], str(o["logo_text"]), str(o["logo_style"]))
    x = test.images
    marked, footprints, overlaps, fooled = [], [], [], 0
    t0 = time.monotonic()
    for i, image in enumerate(x):
        keep = (gradcam_keepout(image, surrogates[0], float(o["keepout_saliency"]))
                if o["keepout_saliency"] else torch.zeros(image.shape[1:], dtype=torch.bool))
        r = search_watermark(image, surrogates, logo, keepout=keep, seed=ev.seed + i,
                             quantum=1 / 255, **search_settings(o))
        foot = r.footprint if r.footprint is not None else torch.zeros_like(keep)
        marked.append(r.image)
        footprints.append(foot)
        overlaps.append(int((foot & keep).sum()))
        fooled += int(r.fooled)
        if ev.progress:
            print(f"\r  watermark {i + 1}/{len(x)} {time.monotonic() - t0:.0f}s", end="",
                  file=sys.stderr, flush=True)
    if ev.progress:
        print(file=sys.stderr)
    seconds = time.monotonic() - t0
    protected = _8bit(torch.stack(marked))
    foot = torch.stack(footprints)
    area = (_box_area(foot).float() / (x.shape[2] * x.shape[3]))
    examples = {"original": x[:4], "protected": protected[:4]}
    clean_subset = _scores(models, x, test)
    scores = _scores(models, protected, test)
    dfs = _attack_defences(run, models, protected, x, test, clean_subset)
    for name, fn in (("blank_box", defences.blank_box), ("inpaint_box", defences.inpaint_box)):
        dfs[name] = _summary(_scores(models, fn(protected, foot), test), clean_subset,
                             run.white, run.black, _chance(test))
    _log(ev, "training the attacker's removal network")
    pairs = _random_marks(s.train.images, logo, float(o["max_area_fraction"]), ev.seed + 11)
    net = defences.train_removal_network(s.train.images, pairs, ev.removal_epochs, ev.seed,
                                         ev.progress)
    with torch.no_grad():
        removed = _8bit(torch.cat([net(protected[i:i + 256])
                                   for i in range(0, len(protected), 256)]))
        held = _random_marks(x, logo, float(o["max_area_fraction"]), ev.seed + 13)
        held_psnr = psnr(x, _8bit(net(held)))
    dfs["removal_network"] = {**_summary(_scores(models, removed, test), clean_subset, run.white,
                                         run.black, _chance(test)),
                              "psnr_on_random_marks_before_db": round(psnr(x, held), 2),
                              "psnr_on_random_marks_after_db": round(held_psnr, 2)}
    outside = ~foot.unsqueeze(1).expand_as(x)
    return {"_examples": examples, "images": len(x),
            "options": {k: v for k, v in o.items() if k != "logo"},
            "seconds_per_image": round(seconds / len(x), 4),
            "fooled_surrogates": fooled,
            "logo_area_fraction": {"mean": round(float(area.mean()), 4),
                                   "max": round(float(area.max()), 4)},
            "keepout_overlap_pixels": {"total": sum(overlaps), "max": max(overlaps)},
            "keepout": "Grad-CAM saliency of the first surrogate (no lesion masks in this set)",
            "quality": {"psnr_db": round(psnr(x, protected), 2),
                        "ssim": round(ssim(x, protected), 4),
                        "changed_outside_footprint":
                            int(((protected - x).abs() > 0)[outside].sum())},
            "clean_on_subset": clean_subset,
            "protected": _summary(scores, clean_subset, run.white, run.black, _chance(test)),
            "defences": dfs}


def _unlearnable(run: _Run, clean: dict[str, float], options: dict[str, Any]) -> dict[str, Any]:
    from ..protect.unlearnable import (
        error_minimizing_noise,
        segmentation_budget,
        shortcut_pattern,
    )

    s, ev = run.splits, run.ev
    o = {"epsilon": 8 / 255, "rounds": 0 if run.segmentation else 10, "train_steps": 10,
         "pgd_steps": 10, "contour_radius": 3, "texture_floor": 0.25, **options}
    eps = float(o["epsilon"])
    release = ImageSet(torch.cat([s.train.images, s.val.images]),
                       None if s.train.labels is None else torch.cat([s.train.labels,
                                                                       s.val.labels]),  # type: ignore[list-item]
                       None if s.train.masks is None else torch.cat([s.train.masks,
                                                                      s.val.masks]),  # type: ignore[list-item]
                       s.train.classes)
    t0 = time.monotonic()
    if run.segmentation:
        assert release.masks is not None
        targets = release.masks
        budget = segmentation_budget(release.images, targets, eps, int(o["contour_radius"]),
                                     float(o["texture_floor"]))
        init: torch.Tensor | None = shortcut_pattern(targets, budget)
        crafter = build("unet-small", s.train)
    else:
        assert release.labels is not None
        targets, budget, init = release.labels, torch.full_like(release.images, eps), None
        crafter = build(run.white[0] if run.white else "cnn-small", s.train)
    result = error_minimizing_noise(release.images, targets, budget, crafter,
                                    rounds=int(o["rounds"]), train_steps=int(o["train_steps"]),
                                    pgd_steps=int(o["pgd_steps"]), seed=ev.seed + 21,
                                    progress=ev.progress, init=init)
    protected = (release.images + result.delta).clamp(0, 1)
    protected = _8bit(protected) if not run.segmentation or ev.dataset == "chasedb1" else protected
    seconds = time.monotonic() - t0
    n_train = len(s.train)
    p_train = ImageSet(protected[:n_train], s.train.labels, s.train.masks, s.train.classes)
    p_val = ImageSet(protected[n_train:], s.val.labels, s.val.masks, s.val.classes)
    examples = {"original": release.images[:4], "protected": protected[:4]}
    names = ev.unlearnable_victims or ((*run.white[:1], *run.black) if not run.segmentation
                                       else run.black)
    trained = {a: run.train(a, p_train, p_val, ev.seed + 100 + i, "on-protected")
               for i, a in enumerate(names)}
    scores = _scores(trained, s.test.images, s.test)
    dfs: dict[str, Any] = {}
    victim = ev.defence_victim or (run.black[0] if run.black else names[0])
    squeezes = {"iss_jpeg10": lambda t: defences.jpeg(t, 10)}
    if s.channels == 3:
        squeezes["iss_grayscale"] = defences.grayscale
    for name, fn in squeezes.items():
        tr = ImageSet(fn(p_train.images), p_train.labels, p_train.masks, p_train.classes)
        va = ImageSet(fn(p_val.images), p_val.labels, p_val.masks, p_val.classes)
        t = run.train(victim, tr, va, ev.seed + 200, name)
        dfs[name] = {victim: round(_score(t.model, fn(s.test.images), s.test), 4)}
    if not run.segmentation:
        trainer = defences.adversarial_trainer(p_train, p_val, ev.epochs, ev.seed + 300,
                                               progress=ev.progress)
        t = run.train(victim, p_train, p_val, ev.seed + 300, "adversarial-training", trainer)
        dfs["adversarial_training"] = {victim: round(_score(t.model, s.test.images, s.test), 4)}
    rel = {a: round(scores[a] / clean[a], 4) if clean.get(a) else None for a in scores}
    clean_ref = {a: clean.get(a) for a in scores}
    return {"_examples": examples, "images": len(release), "options": o,
            "rounds_run": result.rounds,
            "seconds_per_image": round(seconds / len(release), 4),
            "quality": {"psnr_db": round(psnr(release.images, protected), 2),
                        "ssim": round(ssim(release.images, protected), 4)},
            "trained_on_protected": {"per_victim": scores, "clean_reference": clean_ref,
                                     "relative": rel,
                                     "mean_relative": _mean([v for v in rel.values()
                                                             if v is not None])},
            "defence_victim": victim, "defences": dfs,
            "defences_relative": {k: {a: round(v / clean[a], 4) if clean.get(a) else None
                                      for a, v in d.items()} for k, d in dfs.items()}}

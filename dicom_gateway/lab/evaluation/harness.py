"""The evaluation run: train, protect, attack, measure; then :mod:`.report` writes it up.

Classification sets get all three methods; segmentation sets only ``unlearnable`` (the
others need a classifier to fool). Protection uses the gateway's own functions
(:func:`~dicom_gateway.protect.perturbation.attack`,
:func:`~dicom_gateway.protect.watermark.search_watermark`,
:func:`~dicom_gateway.protect.unlearnable.error_minimizing_noise`) on the images at their
native 8-bit depth, as the gateway stores them.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ...protect.quality import psnr, ssim
from ..datasets import ImageSet
from . import defences
from .run import DEFAULT_METHODS, Evaluation, Run, attack_defences, log
from .scoring import chance, mean, retained_skill, rounded, score, score_all, summary, to_8bit
from .victims import Trained, as_surrogate, build
from .watermark_run import evaluate_watermark

__all__ = ["DEFAULT_METHODS", "Evaluation", "run_evaluation"]


def run_evaluation(ev: Evaluation) -> dict[str, Any]:
    """Run everything ``ev`` asks for; write the report; return the results."""
    from .report import write_report

    started = time.monotonic()
    torch.manual_seed(ev.seed)
    run = Run(ev)
    s = run.splits
    log(ev, f"{s.name}: {s.task}, train {len(s.train)}, val {len(s.val)}, test {len(s.test)}, "
             f"{s.resolution[0]}x{s.resolution[1]}x{s.channels}")
    models = run.clean_models()
    clean = score_all(models, s.test.images, s.test)
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
        log(ev, f"method {label}")
        t0 = time.monotonic()
        if method == "adversarial_perturbation":
            r = _perturbation(run, models, clean, options)
        elif method == "adversarial_watermark":
            r = evaluate_watermark(run, models, options)
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


def _perturbation(run: Run, models: dict[str, Trained], clean: dict[str, float],
                  options: dict[str, Any]) -> dict[str, Any]:
    from ...protect.perturbation import DEFAULTS, attack

    s = run.splits
    surrogates = [as_surrogate(models[a], s.train) for a in run.white]
    o = {**{k: v for k, v in DEFAULTS.items() if k != "batch"}, "oracle_labels": False,
         **options}
    x = s.test.images
    # the gateway has no ground truth and moves away from the ensemble's prediction;
    # oracle_labels (evaluation only) moves away from the true label: an upper bound
    y = s.test.labels if o["oracle_labels"] else None
    t0 = time.monotonic()
    attack_options = {k: v for k, v in o.items()
                      if k not in ("oracle_labels", "surrogates", "batch")}
    protected = torch.cat([attack(x[i:i + 64], surrogates, seed=run.ev.seed,
                                  labels=None if y is None else y[i:i + 64], **attack_options)
                           for i in range(0, len(x), 64)])
    seconds = time.monotonic() - t0
    protected = to_8bit(protected)
    examples = {"original": x[:4], "protected": protected[:4]}
    scores = score_all(models, protected, s.test)
    return {"_examples": examples, "images": len(x), "options": o,
            "seconds_per_image": round(seconds / len(x), 4),
            "quality": {"psnr_db": round(psnr(x, protected), 2),
                        "ssim": round(ssim(x, protected), 4),
                        "max_abs_change_8bit": round(float((protected - x).abs().max()) * 255)},
            "protected": summary(scores, clean, run.white, run.black, chance(s.test)),
            "defences": attack_defences(run, models, protected, x, s.test, clean)}


def _unlearnable(run: Run, clean: dict[str, float], options: dict[str, Any]) -> dict[str, Any]:
    from ...protect.unlearnable import (
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
    if not run.segmentation or ev.dataset == "chasedb1":  # stored as 8-bit
        protected = to_8bit(protected)
    seconds = time.monotonic() - t0
    n_train = len(s.train)
    p_train = ImageSet(protected[:n_train], s.train.labels, s.train.masks, s.train.classes)
    p_val = ImageSet(protected[n_train:], s.val.labels, s.val.masks, s.val.classes)
    examples = {"original": release.images[:4], "protected": protected[:4]}
    names = ev.unlearnable_victims or ((*run.white[:1], *run.black) if not run.segmentation
                                       else run.black)
    trained = {a: run.train(a, p_train, p_val, ev.seed + 100 + i, "on-protected")
               for i, a in enumerate(names)}
    scores = score_all(trained, s.test.images, s.test)
    victim = ev.defence_victim or (run.black[0] if run.black else names[0])
    dfs = _training_defences(run, victim, p_train, p_val)
    rel = {a: round(scores[a] / clean[a], 4) if clean.get(a) else None for a in scores}
    clean_ref = {a: clean.get(a) for a in scores}
    ch = chance(s.test)
    skill = {a: rounded(retained_skill(scores[a], clean.get(a), ch)) for a in scores}
    return {"_examples": examples, "images": len(release), "options": o,
            "rounds_run": result.rounds,
            "seconds_per_image": round(seconds / len(release), 4),
            "quality": {"psnr_db": round(psnr(release.images, protected), 2),
                        "ssim": round(ssim(release.images, protected), 4)},
            "trained_on_protected": {"per_victim": scores, "clean_reference": clean_ref,
                                     "relative": rel,
                                     "mean_relative": mean([v for v in rel.values()
                                                             if v is not None]),
                                     "chance": ch, "retained_skill": skill,
                                     "mean_retained_skill": mean([v for v in skill.values()
                                                                  if v is not None])},
            "defence_victim": victim, "defences": dfs,
            "defences_relative": {k: {a: round(v / clean[a], 4) if clean.get(a) else None
                                      for a, v in d.items()} for k, d in dfs.items()},
            "defences_retained_skill": {k: {a: rounded(retained_skill(v, clean.get(a), ch))
                                            for a, v in d.items()} for k, d in dfs.items()}}


def _training_defences(run: Run, victim: str, p_train: ImageSet, p_val: ImageSet
                       ) -> dict[str, Any]:
    """``victim`` trained on the release after the attacker's preprocessing (JPEG q75, ISS's
    squeezes) and with adversarial training: its test score per defence."""
    s, ev = run.splits, run.ev
    dfs: dict[str, Any] = {}
    # JPEG q75 at training time: the attacker's ordinary re-encoding; q10: ISS's squeeze
    squeezes = {"jpeg75_training": lambda t: defences.jpeg(t, 75),
                "iss_jpeg10": lambda t: defences.jpeg(t, 10)}
    if s.channels == 3:
        squeezes["iss_grayscale"] = defences.grayscale
    for name, fn in squeezes.items():
        tr = ImageSet(fn(p_train.images), p_train.labels, p_train.masks, p_train.classes)
        va = ImageSet(fn(p_val.images), p_val.labels, p_val.masks, p_val.classes)
        t = run.train(victim, tr, va, ev.seed + 200, name)
        dfs[name] = {victim: round(score(t.model, fn(s.test.images), s.test), 4)}
    if not run.segmentation:
        trainer = defences.adversarial_trainer(p_train, p_val, ev.epochs, ev.seed + 300,
                                               progress=ev.progress)
        t = run.train(victim, p_train, p_val, ev.seed + 300, "adversarial-training", trainer)
        dfs["adversarial_training"] = {victim: round(score(t.model, s.test.images, s.test), 4)}
    return dfs

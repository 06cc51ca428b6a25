"""The evaluation of ``adversarial_watermark``: marks searched on the test images, scored by
the victims, then attacked (blanking and inpainting the mark's box, and a removal network the
attacker trains on marks of their own)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch

from ...protect.quality import psnr, ssim
from . import defences
from .run import Run, attack_defences, log
from .scoring import cap, chance, score_all, summary, to_8bit
from .victims import Trained, as_surrogate

__all__ = ["evaluate_watermark", "random_marks"]


def random_marks(images: torch.Tensor, logo: torch.Tensor, fraction: float,
                  seed: int) -> torch.Tensor:
    """The attacker's training pairs: the same kind of logo at random places, sizes (up to
    ``fraction`` of the area), opacities, angles and grey levels."""
    from ...protect.watermark_search import render

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
        out[i] = render(img, logo, cand)[0][0]
    return to_8bit(out)


def evaluate_watermark(run: Run, models: dict[str, Trained], options: dict[str, Any]
                       ) -> dict[str, Any]:
    from ...protect.watermark import (
        DEFAULTS,
        gradcam_keepout,
        load_logo,
        search_settings,
        search_watermark,
    )
    from ...protect.watermark_search import box_area

    s, ev = run.splits, run.ev
    o = {**DEFAULTS, **options}
    surrogates = [as_surrogate(models[a], s.train) for a in run.white]
    test = cap(s.test, ev.watermark_images, ev.seed + 7)
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
    protected = to_8bit(torch.stack(marked))
    foot = torch.stack(footprints)
    area = (box_area(foot).float() / (x.shape[2] * x.shape[3]))
    examples = {"original": x[:4], "protected": protected[:4]}
    clean_subset = score_all(models, x, test)
    scores = score_all(models, protected, test)
    dfs = attack_defences(run, models, protected, x, test, clean_subset)
    for name, fn in (("blank_box", defences.blank_box), ("inpaint_box", defences.inpaint_box)):
        dfs[name] = summary(score_all(models, fn(protected, foot), test), clean_subset,
                             run.white, run.black, chance(test))
    log(ev, "training the attacker's removal network")
    pairs = random_marks(s.train.images, logo, float(o["max_area_fraction"]), ev.seed + 11)
    net = defences.train_removal_network(s.train.images, pairs, ev.removal_epochs, ev.seed,
                                         ev.progress)
    with torch.no_grad():
        removed = to_8bit(torch.cat([net(protected[i:i + 256])
                                   for i in range(0, len(protected), 256)]))
        held = random_marks(x, logo, float(o["max_area_fraction"]), ev.seed + 13)
        held_psnr = psnr(x, to_8bit(net(held)))
    dfs["removal_network"] = {**summary(score_all(models, removed, test), clean_subset, run.white,
                                         run.black, chance(test)),
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
            "protected": summary(scores, clean_subset, run.white, run.black, chance(test)),
            "defences": dfs}

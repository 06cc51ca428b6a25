"""The transfer study of ``adversarial_watermark`` at 224: the visible mark put on the test
images by the gateway's own code path, scored by the surrogates (white-box) and by the held-out
victims the study trains (black-box), then attacked.

One row per watermark setting (a ``--profile``), each with the same test images, victims and
scorer as the perturbation's study (:mod:`.transfer`). The mark's footprint (every pixel it
may change) is rendered from the placement the method records in each instance's certificate;
the keep-out mask is recomputed as the method computes it (Grad-CAM of the first surrogate:
the 224 chest X-rays have no lesion masks), so the overlap is measured, not assumed. Attacks:
the test-time defences of the perturbation's study, blanking and inpainting the mark's box
(the attacker is given the exact box: an upper bound on their localization), and the removal
network of the 28x28 harness (:func:`.watermark_run.random_marks`,
:func:`.defences.train_removal_network`) trained on the victims' training images with marks
of the same logo at random places, sizes, opacities, angles and grey levels.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ...protect.quality import psnr, ssim
from ...protect.watermark import DEFAULTS, gradcam_keepout, load_logo
from ...protect.watermark_search import box_area, render
from ..durable import write_durably
from . import defences
from .scoring import to_8bit
from .transfer import DEFENCES, Setup, TransferStudy, log_progress, protect_cached, set_up, subset

__all__ = ["ATTACKS", "WatermarkStudy", "footprints", "keepouts", "run_watermark_transfer"]

ATTACKS = ("blank_box", "inpaint_box", "removal_network")


@dataclass
class WatermarkStudy(TransferStudy):
    """A transfer study of ``adversarial_watermark``: ``profiles`` are ``(label, options)``,
    one row each (options over the method's defaults, surrogates aside)."""

    profiles: list[tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: [("adversarial_watermark", {})])
    removal_epochs: int = 10  # 0: no removal network
    # the attacker's pairs: a stratified subset of the victims' training images (a 224 image
    # costs the removal network 0.3 s an epoch on the 2-core CPU; None: all of them)
    removal_images: int | None = 500


def footprints(images: torch.Tensor, logo: torch.Tensor, parameters: list[Any]) -> torch.Tensor:
    """``(N, H, W)`` bool: the pixels each image's mark may change, rendered from the placement
    in its certificate (empty where no placement was feasible)."""
    out = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)
    for i, p in enumerate(parameters):
        mark = (p.get("marks") or [{}])[0]
        if "x" not in mark:
            continue
        lo, hi = p.get("view_range", (0.0, 255.0))
        cand = torch.tensor([[mark["x"], mark["y"], mark["height"], mark["alpha"],
                              math.radians(mark["angle"]), mark["level"]]])
        _, alpha = render(images[i], logo, cand, quantum=1.0 / (hi - lo))
        out[i] = alpha[0] > 0
    return out


def keepouts(images: torch.Tensor, surrogate: Any, fraction: float) -> torch.Tensor:
    """``(N, H, W)`` bool: the keep-out masks the method computes (Grad-CAM of ``surrogate``)."""
    if not fraction:
        return torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool)
    return torch.stack([gradcam_keepout(img, surrogate, fraction) for img in images])


def run_watermark_transfer(study: WatermarkStudy) -> dict[str, Any]:
    """Run the study; write its report; return the results."""
    from .transfer_watermark_report import write_watermark_report

    started = time.monotonic()
    setup = set_up(study)
    results = setup.results
    results["method"] = "adversarial_watermark"
    results["defaults"] = {k: v for k, v in DEFAULTS.items() if k != "logo"}
    examples: dict[str, torch.Tensor] = {"original": setup.test.images[:3]}
    removal: dict[str, Any] = {}
    results["rows"] = [_row(study, setup, label, options, removal, examples)
                       for label, options in study.profiles]
    results["removal_network"] = [info for _, info in removal.values()]
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    write_watermark_report(results, examples, study.out)
    return results


def _row(study: WatermarkStudy, setup: Setup, label: str, options: dict[str, Any],
         removal: dict[str, Any], examples: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One watermark setting: the marks through the gateway's path, their constraints and
    quality, and every model's figures with and without each attack."""
    log_progress(study, f"{label} on {len(setup.test)} test images")
    o = {**DEFAULTS, **options}
    profile = {**options, "surrogates": [str(p) for p in study.surrogate_files]}
    resolved = {"method": "adversarial_watermark", **o,
                "logo": None if o["logo"] is None else str(o["logo"])}
    x = setup.test.images
    protected, seconds, params, cached = protect_cached(
        "adversarial_watermark", profile, resolved, x, setup.cache, study.progress, chunk=1)
    logo = load_logo(resolved["logo"], str(o["logo_text"]), str(o["logo_style"]))
    foot = footprints(x, logo, params)
    keep = keepouts(x, next(iter(setup.white.values())), float(o["keepout_saliency"]))
    area = box_area(foot).float() / (x.shape[2] * x.shape[3])
    overlap = (foot & keep).flatten(1).sum(1)
    changed = ((protected - x).abs() > 0).any(1)
    marks = [(p.get("marks") or [{}])[0] for p in params]
    examples[label] = protected[:3]
    row: dict[str, Any] = {
        "label": label, "options": json.loads(json.dumps(options, default=str)),
        "images": len(x),
        "seconds_per_image": round(seconds, 3), "marks_from_cache": cached,
        "psnr_db": round(psnr(x, protected), 2), "ssim": round(ssim(x, protected), 4),
        "area_fraction": {"mean": round(float(area.mean()), 4),
                          "max": round(float(area.max()), 4)},
        "keepout_overlap_pixels": {"total": int(overlap.sum()), "max": int(overlap.max())},
        "changed_outside_footprint": int((changed & ~foot).sum()),
        "unmarked": int((~foot.flatten(1).any(1)).sum()),
        "fooled_surrogates": sum(bool(m.get("fooled")) for m in marks),
        "textured": sum(bool(m.get("textured")) for m in marks),
        "patch_bound": float(o["texture"]) >= 1 and float(o["alpha_min"]) >= 1,
        "protected": setup.scorer.summary(protected),
        "attacks": {}}
    for name in DEFENCES:
        row["attacks"][name] = setup.scorer.summary(defences.TEST_TIME[name](protected))
    row["attacks"]["blank_box"] = setup.scorer.summary(defences.blank_box(protected, foot))
    row["attacks"]["inpaint_box"] = setup.scorer.summary(defences.inpaint_box(protected, foot))
    net = _removal_network(study, setup, logo, float(o["max_area_fraction"]), removal)
    if net is not None:
        with torch.no_grad():
            removed = to_8bit(torch.cat([net(protected[i:i + 16])
                                         for i in range(0, len(protected), 16)]))
        row["attacks"]["removal_network"] = setup.scorer.summary(removed)
        examples[f"{label}, after removal"] = removed[:3]
    p = row["protected"]
    log_progress(study, f"  PSNR {row['psnr_db']} dB, area <= {row['area_fraction']['max']}, "
                        f"keep-out overlap {row['keepout_overlap_pixels']['total']} px, "
                        f"white-box acc {p['white_box_accuracy']}, black-box retained skill "
                        f"{p['black_box_retained_skill']}, {seconds:.1f} s/image")
    return row


def _removal_network(study: WatermarkStudy, setup: Setup, logo: torch.Tensor, fraction: float,
                     memo: dict[str, Any]) -> Any:
    """The attacker's removal network for marks of ``logo`` up to ``fraction`` of the area:
    trained once per run and kept in the cache (keyed by its training pairs and settings)."""
    from .watermark_run import random_marks

    if study.removal_epochs <= 0:
        return None
    train = subset(setup.train, study.removal_images, study.seed + 5).images
    h = hashlib.sha256(train.numpy().tobytes())
    h.update((logo * 255).round().to(torch.uint8).numpy().tobytes())
    h.update(f"{fraction:.6f}/{study.removal_epochs}/{study.seed}/removal-v1".encode())
    key = h.hexdigest()[:20]
    if key in memo:
        return memo[key][0]
    path = setup.cache / f"removal-{key}.pt"
    net = defences.removal_network(train.shape[1])
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        net.load_state_dict(blob["state"])
        seconds = float(blob["seconds"])
    else:
        log_progress(study, f"training the attacker's removal network on {len(train)} pairs, "
                            f"{study.removal_epochs} epochs")
        t0 = time.monotonic()
        pairs = random_marks(train, logo, fraction, study.seed + 11)
        net = defences.train_removal_network(train, pairs, study.removal_epochs, study.seed,
                                             study.progress)
        seconds = time.monotonic() - t0
        setup.cache.mkdir(parents=True, exist_ok=True)
        write_durably(partial(torch.save, {"state": net.state_dict(), "seconds": seconds}), path)
    net.eval()
    x = setup.test.images
    held = random_marks(x, logo, fraction, study.seed + 13)
    with torch.no_grad():
        cleaned = to_8bit(torch.cat([net(held[i:i + 16]) for i in range(0, len(held), 16)]))
    memo[key] = (net, {"pairs": len(train), "epochs": study.removal_epochs,
                       "max_area_fraction": fraction, "training_seconds": round(seconds, 1),
                       "psnr_on_random_marks_before_db": round(psnr(x, held), 2),
                       "psnr_on_random_marks_after_db": round(psnr(x, cleaned), 2)})
    return net

"""``report.md``, ``results.json`` and the examples of the watermark's transfer study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .transfer_report import report_head, table

__all__ = ["watermark_targets", "write_watermark_report"]

_DEFENCES = ("jpeg75", "median3", "gaussian1", "resize_crop")
_PER_VICTIM = ("blank_box", "inpaint_box", "removal_network", "jpeg75")


def watermark_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's targets for ``adversarial_watermark``, on the first row (the setting under
    test; the others are for comparison)."""
    out: list[dict[str, Any]] = []
    if not results["rows"]:
        return out
    row = results["rows"][0]

    def add(name: str, measured: float | None, bound: float) -> None:
        if measured is not None:
            out.append({"target": name, "measured": measured, "bound": bound,
                        "met": measured <= bound, "gap": round(max(measured - bound, 0), 4)})
    add("largest mark's box, fraction of the image", row["area_fraction"]["max"], 0.0625)
    add("keep-out overlap, pixels over all images", row["keepout_overlap_pixels"]["total"], 0)
    add("white-box accuracy", row["protected"]["white_box_accuracy"], 0.10)
    add("black-box retained skill", row["protected"]["black_box_retained_skill"], 0.30)
    removal = row["attacks"].get("removal_network")
    if removal is not None:
        add("after the removal network, black-box retained skill",
            removal["black_box_retained_skill"], 0.40)
    return out


def _examples(examples: dict[str, torch.Tensor], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    columns = list(examples)
    n = len(examples["original"])
    fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.2 * n),
                             squeeze=False)
    for i in range(n):
        for j, title in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(examples[title][i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title if len(title) < 40 else title[:37] + "...", fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=80)
    plt.close(fig)
    return ["examples.png"]


def _rs(summary: dict[str, Any] | None, key: str = "black_box_retained_skill") -> Any:
    return None if summary is None else summary.get(key)


def _rows(results: dict[str, Any]) -> list[str]:
    """The settings table, the attacks table and the per-victim tables."""
    rows, victims = results["rows"], results["victims"]
    parts = ["## Settings (black-box = mean over the held-out victims)", "",
             table(["setting", "kind", "PSNR dB", "SSIM", "s/image", "box area mean / max",
                    "keep-out overlap px", "surrogates fooled", "textured", "white-box acc",
                    "black-box RS", "worst victim RS", "RS floored at 0"],
                   [[f"`{r['label']}`", "patch (upper bound)" if r["patch_bound"] else "watermark",
                     r["psnr_db"], r["ssim"], r["seconds_per_image"],
                     f"{r['area_fraction']['mean']:.4f} / {r['area_fraction']['max']:.4f}",
                     r["keepout_overlap_pixels"]["total"],
                     f"{r['fooled_surrogates']}/{r['images']}", f"{r['textured']}/{r['images']}",
                     r["protected"]["white_box_accuracy"],
                     r["protected"]["black_box_retained_skill"],
                     r["protected"]["worst_black_box_retained_skill"],
                     r["protected"]["black_box_retained_skill_floor0"]] for r in rows]), "",
             "## Attacks (black-box retained skill: mean / worst held-out victim; white-box "
             "accuracy)", ""]
    attacks = ["blank_box", "inpaint_box", "removal_network", *_DEFENCES]
    parts.append(table(["setting", "none", *attacks],
                       [[f"`{r['label']}`", _pair(r["protected"]),
                         *[_pair(r["attacks"].get(a)) for a in attacks]] for r in rows]))
    parts += ["", "Per victim (retained skill; in-family victims included, marked *):", "",
              table(["setting", "attack",
                     *[v + ("*" if v in rows[0]["protected"]["in_family"] else "")
                       for v in victims]],
                    [[f"`{r['label']}`", name, *[s["retained_skill"].get(v) for v in victims]]
                     for r in rows for name, s in [("none", r["protected"]),
                                                   *[(a, r["attacks"][a]) for a in _PER_VICTIM
                                                     if a in r["attacks"]]]])]
    return parts


def _pair(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "n/a"

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    return (f"{f(_rs(summary))} / {f(_rs(summary, 'worst_black_box_retained_skill'))}; "
            f"wb {f(_rs(summary, 'white_box_accuracy'))}")


def _resolution_note(results: dict[str, Any]) -> str:
    size = results["dataset"]["resolution"]
    sizes = {tuple(s.get("input_size", ())) for s in results["surrogates"].values()}
    if sizes == {tuple(size)}:
        return (f"Every surrogate takes {size[0]}x{size[1]}, the images' own size: the search "
                "renders each candidate at full resolution, which is the surrogates' input "
                "size, so the approximation of scoring at the surrogates' input size instead of "
                "rendering at full resolution does not arise here (it arises for images larger "
                "than the surrogates' input) and is not measured.")
    return (f"The images are {size[0]}x{size[1]}; the surrogates take "
            f"{', '.join(f'{a}x{b}' for a, b in sorted(sizes))}: the search renders each "
            "candidate at full resolution and resizes it to each surrogate's input.")


def write_watermark_report(results: dict[str, Any], examples: dict[str, torch.Tensor],
                           out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = watermark_targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plots = _examples(examples, out)
    inside = results["rows"][0]["protected"]["in_family"] if results["rows"] else []
    parts = [*report_head(results, "adversarial_watermark",
                          "Marks put on through the gateway's code path (8-bit DICOM in, pixels "
                          "read back), one search per image."),
             "Retained skill (RS) = (accuracy - chance) / (clean accuracy - chance). The box "
             "area is the bounding box of the mark's footprint (every pixel it may change, "
             "rendered from the placement in each certificate) over the image's area; the "
             "keep-out mask is the method's (Grad-CAM of the first surrogate, the most salient "
             "quarter; these images have no lesion masks), recomputed here. Box blanking and "
             "inpainting are given the exact box (an upper bound on the attacker's "
             "localization). A row whose fill is free (texture 1) and opaque (alpha_min 1) is "
             "an adversarial patch in the same box and keep-out: the upper bound of a mark.", "",
             _resolution_note(results), "",
             "A victim less than 0.10 above chance on the clean test images has no skill to "
             "lose: it is listed, its retained skill is n/a, and it is left out of the "
             "black-box means.", "",
             (f"In-family victims (a surrogate of the same family is in the ensemble): "
              f"{', '.join(inside)}: scored and listed, left out of the black-box means, the "
              "worst victim and the targets." if inside else
              "Every victim is of a family none of the surrogates belongs to."), "",
             "Method defaults: `" + json.dumps(results["defaults"], sort_keys=True) + "`", "",
             "## Targets (first setting)", "",
             table(["target", "measured", "bound", "met", "missed by"],
                   [[t["target"], t["measured"], t["bound"], "yes" if t["met"] else "NO",
                     t["gap"]] for t in results["targets"]]), "",
             *_rows(results), ""]
    cached = [r["label"] for r in results["rows"] if r.get("marks_from_cache")]
    if cached:
        parts += [f"Marks of {', '.join(f'`{c}`' for c in cached)} read from the cache: an "
                  "earlier run with the same images, options and surrogate files put them on "
                  "(its seconds per image are the ones given); this run's wall time does not "
                  "include them.", ""]
    for info in results["removal_network"]:
        parts += [f"Removal network: {info['pairs']} pairs (the victims' training images with "
                  f"random marks up to {info['max_area_fraction']:.4f} of the area), "
                  f"{info['epochs']} epochs, {info['training_seconds'] / 60:.1f} min to train; "
                  "PSNR on random marks of the test images "
                  f"{info['psnr_on_random_marks_before_db']} dB before, "
                  f"{info['psnr_on_random_marks_after_db']} dB after.", ""]
    if not results["removal_network"]:
        parts += ["Removal network: not run (`--removal-epochs 0`).", ""]
    parts += [*[f"![{p}]({p})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(parts))

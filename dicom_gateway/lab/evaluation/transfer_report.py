"""``report.md``, ``results.json``, the frontier plot and the examples of a transfer study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .victims import RECIPES

__all__ = ["fmt", "report_head", "table", "transfer_targets", "write_transfer_report"]

_FILTERS = ("median3", "gaussian1", "resize_crop")


def _row_at(results: dict[str, Any], eps_255: float) -> dict[str, Any] | None:
    for row in results["frontier"]:
        if abs(row["epsilon_255"] - eps_255) < 0.01:
            return row
    return None


def transfer_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The perturbation targets at 224 (retained skill, black-box = mean over the victims)."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, bound: float) -> None:
        if measured is not None:
            out.append({"target": name, "measured": measured, "bound": bound,
                        "met": measured <= bound, "gap": round(max(measured - bound, 0), 4)})
    at8, at4 = _row_at(results, 8), _row_at(results, 4)
    if at8:
        add("8/255: white-box accuracy", at8["protected"]["white_box_accuracy"], 0.05)
        add("8/255: black-box retained skill", at8["protected"]["black_box_retained_skill"],
            0.20)
        add("8/255: after JPEG q75, black-box retained skill",
            at8["defences"]["jpeg75"]["black_box_retained_skill"], 0.30)
        strongest = [at8["defences"][f]["black_box_retained_skill"] for f in _FILTERS
                     if at8["defences"].get(f, {}).get("black_box_retained_skill") is not None]
        if strongest:
            add("8/255: after the strongest of median, Gaussian, resize-crop", max(strongest),
                0.35)
    if at4:
        add("4/255: black-box retained skill", at4["protected"]["black_box_retained_skill"],
            0.50)
    return out


def fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _plots(results: dict[str, Any], examples: dict[str, torch.Tensor], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = results["frontier"]
    if not rows:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "psnr_db", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["protected"]["black_box_retained_skill"] for r in rows], "o-",
                label="black-box, no defence")
        ax.plot(xs, [r["defences"]["jpeg75"]["black_box_retained_skill"] for r in rows], "s--",
                label="black-box, after JPEG q75")
        for r in rows:
            ax.annotate(f"{r['epsilon_255']:g}/255", (r[key],
                        r["protected"]["black_box_retained_skill"]), fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("retained skill")
        ax.legend(fontsize=8)
    fig.suptitle("adversarial_perturbation: budget-quality frontier")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=100)
    plt.close(fig)
    original = examples["original"]
    budgets = [k for k in examples if k != "original"]
    fig, axes = plt.subplots(len(original), 1 + 2 * len(budgets),
                             figsize=(2 * (1 + 2 * len(budgets)), 2 * len(original)))
    for i in range(len(original)):
        cells = [("original", original[i])]
        for b in budgets:
            p = examples[b][i]
            cells += [(b, p), (f"{b} diff x8", (0.5 + 8 * (p - original[i])).clamp(0, 1))]
        for j, (title, img) in enumerate(cells):
            ax = axes[i][j]
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=80)
    plt.close(fig)
    return ["frontier.png", "examples.png"]


def _family_note(results: dict[str, Any]) -> str:
    """Which victims share a family with a surrogate (scored, not held out)."""
    frontier = results.get("frontier") or [{}]
    inside = frontier[0].get("protected", {}).get("in_family", [])
    if not inside:
        return "Every victim is of a family none of the surrogates belongs to (held out)."
    return (f"In-family victims (a surrogate of the same family is in the ensemble): "
            f"{', '.join(inside)}. They are scored and listed, but the black-box means, the "
            "worst victim and the targets are over the held-out victims only.")


def _at(results: dict[str, Any]) -> str:
    size = results.get("victim_size")
    if not size:
        return ""
    d = results["dataset"]["resolution"]
    return (f", at the partner's resolution {size}x{size}: the training images resized to it "
            f"and every image a victim is given ({d[0]}x{d[1]} as stored and protected) "
            "resized the same way (antialiased, 8-bit) before it classifies it")


def report_head(results: dict[str, Any], method: str, how: str) -> list[str]:
    """The head of a transfer report: title, command, data, chance, how the images were
    protected (``how``), the victims' recipe, the wall time, and the clean models' table."""
    d = results["dataset"]
    models = [*results["surrogates"], *results["victims"]]
    return [f"# Transfer of `{method}`: {d['name']}", "",
            "```", results["command"] or "(run from the library)", "```", "",
            f"Data: {d['source']} ({d['resolution'][0]}x{d['resolution'][1]}x{d['channels']}), "
            f"train {d['train']}, val {d['val']}, test {d['test']} of {d['test_full']}. "
            f"Chance (majority class of the test images): {results['chance']:.3f}. {how} "
            f"Victims trained {results['epochs']} epochs from scratch with the "
            f"{RECIPES[results.get('victim_recipe', 'practitioner')]}{_at(results)}. Wall "
            "time of the run: "
            f"{results['wall_seconds'] / 60:.1f} min.", "",
            "## Clean models", "",
            table(["model", "test accuracy", "val accuracy"],
                  [[m, results["clean"]["test_accuracy"][m],
                    results["clean"]["val_accuracy"].get(m)] for m in models]), ""]


def write_transfer_report(results: dict[str, Any], examples: dict[str, torch.Tensor],
                          out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = transfer_targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    plots = _plots(results, examples, out)
    victims = results["victims"]
    parts = [*report_head(results, "adversarial_perturbation",
                          "Protection through the gateway's code path (8-bit DICOM in, pixels "
                          "read back)."),
             "A victim less than 0.10 above chance on the clean test images has no skill to "
             "lose: it is listed, its retained skill is n/a, and it is left out of the "
             "black-box means.", "",
             _family_note(results), "",
             "Attack options: `" + json.dumps(results["options"], sort_keys=True) + "`", "",
             "## Targets", "",
             table(["target", "measured", "bound", "met", "missed by"],
                    [[t["target"], t["measured"], t["bound"], "yes" if t["met"] else "NO",
                      t["gap"]] for t in results["targets"]]), "",
             "## Budget-quality frontier (retained skill; black-box = mean over the victims)",
             ""]
    head = ["epsilon", "PSNR dB", "SSIM", "s/image", "white-box acc", "black-box RS",
            "worst victim RS", "RS floored at 0",
            *[f"RS after {f}" for f in ("jpeg75", "median3", "gaussian1", "resize_crop")]]
    parts.append(table(head, [[f"{r['epsilon_255']:g}/255", r["psnr_db"], r["ssim"],
                                r["seconds_per_image"], r["protected"]["white_box_accuracy"],
                                r["protected"]["black_box_retained_skill"],
                                r["protected"].get("worst_black_box_retained_skill"),
                                r["protected"].get("black_box_retained_skill_floor0"),
                                *[r["defences"][f]["black_box_retained_skill"]
                                  for f in ("jpeg75", "median3", "gaussian1", "resize_crop")]]
                               for r in results["frontier"]]))
    parts += ["", "Per victim (retained skill, no defence):", "",
              table(["epsilon", *victims],
                     [[f"{r['epsilon_255']:g}/255",
                       *[r["protected"]["retained_skill"][v] for v in victims]]
                      for r in results["frontier"]])]
    if results["ablation"]:
        a0 = results["ablation"][0]
        parts += ["", f"## Ablation ({a0['epsilon_255']:g}/255, {a0['images']} test images)",
                  "", table(["lever", "options", "black-box RS", "worst victim RS",
                              "RS floored at 0", "RS after JPEG q75", "white-box acc",
                              "s/image"],
                             [[a["lever"], "`" + json.dumps(a["options"]) + "`",
                               a["black_box_retained_skill"],
                               a.get("worst_black_box_retained_skill"),
                               a.get("black_box_retained_skill_floor0"), a["after_jpeg75"],
                               a["white_box_accuracy"], a["seconds_per_image"]]
                              for a in results["ablation"]]),
                  "", "Per victim (retained skill, no defence):", "",
                  table(["lever", *victims],
                         [[a["lever"], *[a["retained_skill"].get(v) for v in victims]]
                          for a in results["ablation"]])]
    parts += ["", *[f"![{p}]({p})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(parts))

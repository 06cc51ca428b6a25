"""``report.md``, ``results.json`` and the PNG plots of an evaluation run, with the targets of
the evaluation issue and the seed papers' figures side by side."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .targets import lookup, targets

__all__ = ["SEEDS", "targets", "write_report"]

# The seeds' published figures (docs/references.md): MIAD-MARK (visible
# adversarial watermark; Messidor, ISIC2019, BTMRI at 224x224, seven backbones) and UMed
# (unlearnable medical segmentation; 2D sets, six segmenters).
SEEDS = {
    "watermark_white_box": ("MIAD-MARK white-box accuracy", 8.57),
    "watermark_black_box": ("MIAD-MARK black-box accuracy", 45.83),
    "watermark_removal": ("MIAD-MARK accuracy after removal networks", 38.59),
    "umed_dice": ("UMed Dice clean -> protected", "82.18 -> 6.80"),
    "umed_psnr": ("UMed PSNR (dB)", 50.03),
}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _table(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _victim_rows(results: dict[str, Any], method: str) -> list[list[str]]:
    r = results["methods"][method]
    white = set(results["settings"]["white_box"])
    clean = r.get("clean_on_subset") or results["clean"]["per_victim"]
    columns = [("protected", r["protected"]["per_victim"])]
    columns += [(k, v["per_victim"]) for k, v in r["defences"].items()]
    rows = []
    for victim in clean:
        row = [victim, "white" if victim in white else "black", _pct(clean[victim])]
        row += [_pct(col.get(victim)) for _, col in columns]
        rows.append(row)
    return rows


def _plots(results: dict[str, Any], examples: dict[str, dict[str, torch.Tensor]],
           out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    metric = results["metric"]
    for label, r in results["methods"].items():
        method = r.get("method", label)
        fig, ax = plt.subplots(figsize=(11, 4.2))
        if method == "unlearnable":
            bars = {"clean-trained": r["trained_on_protected"]["clean_reference"],
                    "trained on protected": r["trained_on_protected"]["per_victim"]}
            for k, v in r["defences"].items():
                bars[k] = v
        else:
            bars = {"clean": r.get("clean_on_subset") or results["clean"]["per_victim"],
                    "protected": r["protected"]["per_victim"]}
            bars.update({k: v["per_victim"] for k, v in r["defences"].items()})
        victims = list(next(iter(bars.values())))
        width = 0.8 / len(bars)
        for j, (bar, scores) in enumerate(bars.items()):
            xs = [i + j * width for i, v in enumerate(victims) if scores.get(v) is not None]
            ys = [scores[v] for v in victims if scores.get(v) is not None]
            ax.bar(xs, ys, width, label=bar)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(victims))], victims)
        ax.set_ylabel(f"test {metric}")
        ax.set_ylim(0, 1)
        ax.set_title(f"{results['dataset']['name']}: {label}")
        ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        name = f"{_slug(label)}-{metric}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    for label, ex in examples.items():
        orig, prot = ex["original"], ex["protected"]
        n = len(orig)
        if not n:
            continue
        fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 6.6), squeeze=False)
        diff = (prot - orig).abs()
        scale = 1 / max(float(diff.max()), 1e-6)
        for i in range(n):
            for row, (img, title) in enumerate(((orig[i], "original"), (prot[i], "protected"),
                                               (diff[i] * scale, f"|difference| x{scale:.0f}"))):
                a = img.permute(1, 2, 0).clamp(0, 1).numpy()
                axes[row][i].imshow(a[..., 0] if a.shape[2] == 1 else a, cmap="gray",
                                    vmin=0, vmax=1, interpolation="nearest")
                axes[row][i].set_axis_off()
                if i == 0:
                    axes[row][i].set_title(title, fontsize=8, loc="left")
        fig.tight_layout()
        name = f"{_slug(label)}-examples.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def _seed_table(results: dict[str, Any]) -> str:
    m = results["methods"]

    def first(method: str) -> dict[str, Any] | None:
        return next((r for r in m.values() if r.get("method") == method), None)
    w = first("adversarial_watermark")
    u = first("unlearnable")
    ds = results["dataset"]
    where = f"{ds['name']} {ds['resolution'][0]}x{ds['resolution'][1]}, test {ds['test']}"
    rows = []
    if w:
        rows += [
            [SEEDS["watermark_white_box"][0], f"{SEEDS['watermark_white_box'][1]} %",
             _pct(w["protected"]["white_box_mean"]), where + f", {w['images']} marked"],
            [SEEDS["watermark_black_box"][0], f"{SEEDS['watermark_black_box'][1]} %",
             _pct(w["protected"]["black_box_mean"]), "held-out architectures"],
            [SEEDS["watermark_removal"][0], f"{SEEDS['watermark_removal'][1]} %",
             _pct(lookup(w, "defences", "removal_network", "black_box_mean")),
             "our removal network, black-box victims"]]
    if u and results["metric"] == "dice":
        tp = u["trained_on_protected"]
        ref = [v for v in tp["clean_reference"].values() if v is not None]
        prot = list(tp["per_victim"].values())
        rows += [[SEEDS["umed_dice"][0], f"{SEEDS['umed_dice'][1]} %",
                  f"{_pct(sum(ref) / len(ref))} -> {_pct(sum(prot) / len(prot))}", where],
                 [SEEDS["umed_psnr"][0], str(SEEDS["umed_psnr"][1]),
                  f"{u['quality']['psnr_db']}", "8-bit" if ds["name"] != "msd-lung" else "float"]]
    elif u:
        tp = u["trained_on_protected"]
        rows += [["UMed (segmentation only; EM here on classification)", "82.18 -> 6.80 % Dice",
                  f"accuracy x{tp['mean_relative']} of clean", where]]
    if not rows:
        return ""
    head = ["figure", "seed", "ours", "our setting"]
    return ("## Next to the seed papers\n\n" + _table(rows, head)
            + "\n\nThe seeds used other data at higher resolution (MIAD-MARK: Messidor, ISIC2019, "
            "BTMRI at 224x224 with seven ImageNet backbones; UMed: 2D segmentation sets and six "
            "segmenters). Ours run on the sets in `shared/data` at their native resolution on a "
            "2-core CPU with small victims; the figures are not directly comparable.\n")


def write_report(results: dict[str, Any], examples: dict[str, dict[str, torch.Tensor]],
                 out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    results["plots"] = _plots(results, examples, out)
    (out / "results.json").write_text(json.dumps(_finite(results), indent=2, default=_json,
                                                        allow_nan=False) + "\n")
    ds, metric = results["dataset"], results["metric"]
    lines = [f"# Evaluation: {ds['name']}", "",
             f"Command: `{results['command']}`" if results["command"] else "", "",
             (f"Data: {ds['source']} (sha256 {ds['sha256'][:16]}...): {ds['task']}, train "
              f"{ds['train']}, val {ds['val']}, test {ds['test']}, "
              f"{ds['resolution'][0]}x{ds['resolution'][1]}x{ds['channels']}."),
             (f"Seed {results['settings']['seed']}, {results['settings']['epochs']} epochs per "
              f"victim, wall time {results['wall_seconds']:.0f} s. White-box victims (= the "
              f"surrogates protection used): "
              f"{', '.join(results['settings']['white_box']) or 'none'}. Black-box victims "
              f"(architectures not in the ensemble): "
              f"{', '.join(results['settings']['black_box'])}."), ""]
    lines += ["## Targets", ""]
    rows = [[t["target"], f"{t['direction']} {t['bound']}{t['unit'] and ' ' + t['unit']}",
             f"{t['measured']}", "met" if t["met"] else f"missed by {t['gap']}"]
            for t in results["targets"]]
    lines += [_table(rows, ["target", "bound", "measured", "result"]) if rows else
              "(no target of the issue applies to this set)", ""]
    lines += ["## Clean models", "", _table(
        [[v, _pct(s), _pct(results["clean"]["val"][v])]
         for v, s in results["clean"]["per_victim"].items()],
        ["model", f"test {metric}", f"val {metric}"]), ""]
    for label, r in results["methods"].items():
        method = r.get("method", label)
        lines += [f"## {label}", ""]
        q = r["quality"]
        lines.append(f"{r['images']} images, {r['seconds_per_image'] * 1000:.0f} ms per image "
                     f"(CPU), PSNR {q['psnr_db']} dB, SSIM {q['ssim']}; options "
                     f"`{json.dumps(r['options'], default=_json)}`.")
        if method == "adversarial_watermark":
            lines.append(f"Logo box area: mean {_pct(r['logo_area_fraction']['mean'])}, max "
                         f"{_pct(r['logo_area_fraction']['max'])} of the image; keep-out overlap "
                         f"{r['keepout_overlap_pixels']['total']} pixels ({r['keepout']}); "
                         f"surrogates fooled on {r['fooled_surrogates']}/{r['images']}; pixels "
                         f"changed outside the footprint: {q['changed_outside_footprint']}.")
            rn = r["defences"]["removal_network"]
            lines.append(f"Removal network on held-out random marks: PSNR "
                         f"{rn['psnr_on_random_marks_before_db']} -> "
                         f"{rn['psnr_on_random_marks_after_db']} dB.")
        lines.append("")
        if method == "unlearnable":
            lines += _unlearnable_lines(r, metric)
        else:
            head = ["victim", "role", "clean", "protected", *r["defences"]]
            lines += [_table(_victim_rows(results, label), head), ""]
            summary = [[k, _pct(v["white_box_mean"]), _pct(v["black_box_mean"]),
                        str(v["black_box_relative"]), str(v.get("black_box_retained_skill"))]
                       for k, v in {"protected": r["protected"], **r["defences"]}.items()]
            lines += [_table(summary, ["condition", "white-box mean", "black-box mean",
                                       "black-box / clean", "black-box retained skill"]), "",
                      f"Chance (the test split's majority class): {r['protected'].get('chance')}.",
                      ""]
        for plot in results["plots"]:
            if plot.rsplit("-", 1)[0] == _slug(label):
                lines += [f"![{plot}]({plot})", ""]
    for method, why in results["skipped"].items():
        lines += [f"Skipped {method}: {why}.", ""]
    lines.append(_seed_table(results))
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _unlearnable_lines(r: dict[str, Any], metric: str) -> list[str]:
    """The report's tables of victims trained on the protected release, and of the defences."""
    lines: list[str] = []
    tp = r["trained_on_protected"]
    skill = tp.get("retained_skill", {})
    lines += [(f"Victims trained on the protected release ({r['rounds_run']} min-min "
               f"rounds), tested on the clean test split:"), "", _table(
                  [[v, _pct(tp["clean_reference"][v]), _pct(s),
                    f"{tp['relative'][v]}", str(skill.get(v))]
                   for v, s in tp["per_victim"].items()],
                  ["victim", "trained on clean", "trained on protected", "ratio",
                   "retained skill"]), "",
              (f"Mean ratio {tp['mean_relative']}, mean retained skill "
               f"{tp.get('mean_retained_skill')} (chance {tp.get('chance')}). "
               f"Defences ({r['defence_victim']}):"), ""]
    dskill = r.get("defences_retained_skill", {})
    lines += [_table([[k, _pct(v[r["defence_victim"]]),
                       str(r["defences_relative"][k][r["defence_victim"]]),
                       str(dskill.get(k, {}).get(r["defence_victim"]))]
                      for k, v in r["defences"].items()],
                     ["defence (at training time)", f"test {metric}",
                      "ratio to clean-trained", "retained skill"]), ""]
    return lines


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in label)


def _finite(value: Any) -> Any:
    """JSON without NaN/Infinity: non-finite floats become strings ("inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value)

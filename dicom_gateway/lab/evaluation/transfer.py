"""The transfer study: how much skill models the hospital never trained keep on images that
``adversarial_perturbation`` protected through the gateway's own code path.

The protection ensemble is a set of real surrogate files (what ``train-surrogate`` writes and a
profile names); the images are wrapped as DICOM, protected by the method the gateway runs and
read back (:mod:`.gateway_path`). The unauthorized user's models are trained from scratch on
the clean training split with a practitioner's recipe (:func:`.victims.train_cached`,
``recipe="practitioner"``). Every efficacy figure is **retained skill**:
(accuracy - chance) / (clean accuracy - chance), chance = the accuracy of always answering the
test split's majority class; 0 means the model is reduced to guessing, negative means it is
pushed below guessing.

Measured: a budget frontier (each ``epsilon`` -> PSNR, SSIM, white-box accuracy, black-box
retained skill, and retained skill after the user's test-time defences), and an ablation of
the transfer levers at one budget on a seeded subset of the test split.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ...protect.perturbation import DEFAULTS, adapt
from ...protect.quality import psnr, ssim
from ...protect.surrogate import load_surrogate
from ..datasets import ImageSet, resize_images
from ..durable import write_durably
from ..train import accuracy
from . import defences
from .data import load_dataset
from .gateway_path import protect_through_gateway
from .scoring import MIN_CLEAN_SKILL, retained_skill
from .victims import family, train_cached

__all__ = ["DEFAULT_ABLATION", "DEFAULT_VICTIMS_224", "DEFENCES", "MIN_CLEAN_SKILL", "Scorer",
           "Setup", "TransferStudy", "ensemble_labels", "log_progress", "protect_cached",
           "relative_source", "retained_skill", "run_transfer", "set_up", "subset",
           "train_victims"]

DEFAULT_VICTIMS_224 = ("shufflenetv2-x0.5", "mobilenetv3-small-224", "convnext-small",
                       "vit-small", "regnetx-400mf", "densenet-small")

# lever -> options over the study's base options (each alone, then combined)
DEFAULT_ABLATION: list[tuple[str, dict[str, Any]]] = [
    ("I-FGSM (no momentum, no diversity)", {"momentum": 0.0, "diversity": 0.0}),
    ("MI-FGSM + DI (the previous default)", {}),
    ("+ logit margin loss", {"loss": "margin"}),
    ("+ TI smoothing 7 px", {"smoothing": 7}),
    ("+ scale invariance (2 copies)", {"scales": 2}),
    ("+ 20 steps", {"steps": 20}),
    ("+ margin, TI 7 px, 20 steps", {"loss": "margin", "smoothing": 7, "steps": 20}),
]

DEFENCES = ("jpeg75", "median3", "gaussian1", "resize_crop")


@dataclass
class TransferStudy:
    dataset: str
    out: Path
    surrogate_files: tuple[Path, ...]
    victims: tuple[str, ...] = DEFAULT_VICTIMS_224
    budgets: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
    options: dict[str, Any] = field(default_factory=dict)  # attack options besides epsilon
    ablation: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ablation_budget: float = 8 / 255
    ablation_images: int = 150
    # surrogate-side levers: other ensembles, each measured with the study's attack options
    ablation_ensembles: tuple[tuple[Path, ...], ...] = ()
    epochs: int = 4
    seed: int = 0
    data_dir: Path | None = None
    cache: Path | None = None
    test_images: int | None = None
    train_images: int | None = None  # victims: a stratified subset of the training split
    victim_recipe: str = "practitioner"  # how the victims are trained (victims.RECIPES)
    size: int | None = None  # the images as stored and protected: resized to this on load
    victim_size: int | None = None  # the partner's resolution: victims train and score there
    progress: bool = True
    command: str = ""


def log_progress(study: TransferStudy, msg: str) -> None:
    if study.progress:
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def relative_source(source: str, data_dir: Path | None) -> str:
    """A source path under the data folder as ``<data folder>/...``, so that a committed
    report names no machine's absolute paths."""
    from .data import default_data_dir

    base = (data_dir or default_data_dir()).resolve()
    try:
        return "<data folder>/" + Path(source).resolve().relative_to(base).as_posix()
    except ValueError:
        return source


def subset(data: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A seeded subset of ``n`` images in the split's class proportions."""
    if n is None or n >= len(data):
        return data
    from ..datasets import stratified_split

    _, held = stratified_split(data, n / len(data), seed)
    return held


class Scorer:
    """Accuracies and retained skills of every model on a batch of images."""

    def __init__(self, white: dict[str, Any], black: dict[str, Any], test: ImageSet) -> None:
        assert test.labels is not None
        self.white, self.black, self.labels = white, black, test.labels
        # victims of a family the ensemble holds are scored but not held out
        families = {family(s.info.arch) for s in white.values()}
        self.in_family = frozenset(n for n in black if family(n) in families)
        counts = torch.bincount(test.labels)
        self.chance = float(counts.max()) / len(test.labels)
        self.clean = self.accuracies(test.images)

    def accuracies(self, images: torch.Tensor) -> dict[str, float]:
        out = {n: accuracy(m, images, self.labels, batch=64) for n, m in self.black.items()}
        for n, s in self.white.items():
            out[n] = accuracy(_Adapted(s), images, self.labels, batch=64)
        return {n: round(v, 4) for n, v in out.items()}

    def summary(self, images: torch.Tensor) -> dict[str, Any]:
        acc = self.accuracies(images)
        rs = {n: retained_skill(acc[n], self.clean[n], self.chance) for n in acc}
        black = [v for n in self.black if n not in self.in_family and (v := rs[n]) is not None]
        worst = max(black) if black else None
        white = [acc[n] for n in self.white]
        return {"accuracy": acc,
                "retained_skill": {n: None if v is None else round(v, 4) for n, v in rs.items()},
                "white_box_accuracy": round(sum(white) / len(white), 4) if white else None,
                "black_box_retained_skill": round(sum(black) / len(black), 4) if black else None,
                # the mean lets victims pushed below chance hide one the attack does not
                # reach: the least protected victim, and the mean with skill floored at 0
                "worst_black_box_retained_skill": None if worst is None else round(worst, 4),
                "black_box_retained_skill_floor0": round(
                    sum(max(v, 0.0) for v in black) / len(black), 4) if black else None,
                "black_box_accuracy": round(
                    sum(acc[n] for n in self.black if n not in self.in_family)
                    / max(len(self.black) - len(self.in_family), 1), 4),
                "in_family": sorted(self.in_family)}


def at_size(data: ImageSet, size: int | None) -> ImageSet:
    """``data`` with its images at ``size`` x ``size`` (:func:`resize_images`), or as is."""
    if size is None:
        return data
    return ImageSet(resize_images(data.images, size), data.labels, data.masks, data.classes)


class _Resized(torch.nn.Module):
    """A victim trained at ``size``: what it is given is first resized as a partner's
    pipeline resizes a release stored at another resolution."""

    def __init__(self, model: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(resize_images(x, self.size))


class _Adapted(torch.nn.Module):
    """A surrogate as a classifier of [0, 1] images at the data's size."""

    def __init__(self, surrogate: Any) -> None:
        super().__init__()
        self.s = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s.model(adapt(x, self.s))


def _protect(study: TransferStudy, images: torch.Tensor, epsilon: float,
             extra: dict[str, Any], cache: Path) -> tuple[torch.Tensor, float]:
    """The images protected through the gateway's path, or the same protection cached, so that
    victims added later are scored on exactly the images the earlier ones saw."""
    options = {**study.options, "surrogates": [str(p) for p in study.surrogate_files],
               **extra, "epsilon": epsilon}
    # the key holds every attack setting the images were protected with, defaults included:
    # a changed default must not find the images protected under the previous one
    resolved = {**{k: v for k, v in DEFAULTS.items() if k != "batch"}, **options}
    protected, seconds, _, _ = protect_cached("adversarial_perturbation", options, resolved,
                                              images, cache, study.progress)
    return protected, seconds


def protect_cached(method: str, options: dict[str, Any], resolved: dict[str, Any],
                   images: torch.Tensor, cache: Path, progress: bool = True, chunk: int = 32
                   ) -> tuple[torch.Tensor, float, list[Any], bool]:
    """``images`` protected by ``method`` through the gateway's path, the seconds per image,
    each instance's certificate parameters and False; or the same read from ``cache`` and True.
    The key holds the images, ``resolved`` (every setting, defaults included, surrogates aside)
    and the hashes of the surrogate files ``options`` names; the images done so far are kept
    beside the key's file, and a later call with the same key goes on from them."""
    import hashlib
    import json

    h = hashlib.sha256(images.numpy().tobytes())
    h.update(json.dumps({k: v for k, v in resolved.items() if k != "surrogates"},
                        sort_keys=True).encode())
    for f in options["surrogates"]:
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    path = cache / f"protected-{h.hexdigest()[:20]}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return (blob["images"], float(blob["seconds_per_image"]),
                json.loads(blob.get("parameters", "[]")), True)
    # protected in parts of ``step`` images, each saved, so that a run stopped midway resumes
    part, step = path.with_suffix(".part"), max(chunk, 4)
    blob = (torch.load(part, weights_only=True) if part.is_file()
            else {"images": images[:0].clone(), "seconds": 0.0, "parameters": "[]"})
    done, seconds, parameters = blob["images"], float(blob["seconds"]), json.loads(
        blob["parameters"])
    cache.mkdir(parents=True, exist_ok=True)
    for start in range(len(done), len(images), step):
        out, rate = protect_through_gateway(method, options, images[start:start + step],
                                            chunk=chunk, progress=progress,
                                            parameters=parameters)
        done, seconds = torch.cat([done, out]), seconds + rate * len(out)
        write_durably(partial(torch.save, {"images": done, "seconds": seconds, "parameters":
                                           json.dumps(parameters, default=str)}), part)
    protected, seconds = done, seconds / max(len(images), 1)
    write_durably(partial(torch.save, {"images": protected, "seconds_per_image": seconds,
                                       "parameters": json.dumps(parameters, default=str)}), path)
    part.unlink(missing_ok=True)
    return protected, seconds, parameters, False


@dataclass
class Setup:
    """What every study of the 224 path starts from: the splits, the scored test images, the
    victims' training images, the cache, the models and their scorer, and the results' head."""

    splits: Any
    test: ImageSet
    train: ImageSet
    cache: Path
    white: dict[str, Any]
    black: dict[str, Any]
    scorer: Scorer
    results: dict[str, Any]


def set_up(study: TransferStudy) -> Setup:
    """Load the data, the surrogates and the victims (trained or cached); the results' head."""
    splits = load_dataset(study.dataset, study.data_dir, seed=study.seed, resize=study.size)
    test = subset(splits.test, study.test_images, study.seed)
    train = subset(splits.train, study.train_images, study.seed + 2)
    cache = study.cache or study.out / "cache"
    black, clean_val = train_victims(study, at_size(train, study.victim_size),
                                     at_size(splits.val, study.victim_size), cache)
    if study.victim_size is not None:  # each victim brings what it is given to its size
        black = {n: _Resized(m, study.victim_size).eval() for n, m in black.items()}
    white = {f"surrogate:{path.stem}": load_surrogate(path) for path in study.surrogate_files}
    scorer = Scorer(white, black, test)
    log_progress(study, f"clean accuracies {scorer.clean}, chance {scorer.chance:.4f}")
    results: dict[str, Any] = {
        "command": study.command,
        "dataset": {"name": splits.name, "source": relative_source(splits.source, study.data_dir),
                    "sha256": splits.digest,
                    "train": len(splits.train), "victim_train": len(train),
                    "val": len(splits.val),
                    "test": len(test), "test_full": len(splits.test),
                    "resolution": list(splits.resolution), "channels": splits.channels,
                    "classes": list(splits.train.classes)},
        "chance": round(scorer.chance, 4),
        "clean": {"test_accuracy": scorer.clean, "val_accuracy": clean_val},
        "surrogates": {name: {"file": path.name, "sha256": white[name].sha256,
                              "arch": white[name].info.arch,
                              "input_size": list(white[name].info.input_size),
                              "training": white[name].info.training}
                       for path in study.surrogate_files
                       for name in [f"surrogate:{path.stem}"]},
        "victims": list(study.victims),
        "victim_size": study.victim_size,
        "epochs": study.epochs,
        "victim_recipe": study.victim_recipe,
    }
    return Setup(splits, test, train, cache, white, black, scorer, results)


def run_transfer(study: TransferStudy) -> dict[str, Any]:
    """Run the study; write its report; return the results."""
    from .transfer_report import write_transfer_report

    started = time.monotonic()
    setup = set_up(study)
    test, cache, results = setup.test, setup.cache, setup.results
    results["options"] = {**{k: v for k, v in DEFAULTS.items() if k not in ("epsilon", "batch")},
                          **study.options}
    examples: dict[str, torch.Tensor] = {"original": test.images[:3]}
    results["frontier"] = [_budget_row(study, setup.scorer, test, eps, cache, examples)
                           for eps in study.budgets]
    results["ablation"] = _ablation(study, setup.white, setup.black, test, cache)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    write_transfer_report(results, examples, study.out)
    return results


def train_victims(study: TransferStudy, train: ImageSet, val: ImageSet, cache: Path
             ) -> tuple[dict[str, Any], dict[str, float]]:
    """The unauthorized models, trained (or read from the cache) by ``study.victim_recipe``
    (the practitioner's by default), with their validation accuracies."""
    black, clean_val = {}, {}
    for i, arch in enumerate(study.victims):
        t0 = time.monotonic()
        # a victim's seed follows its place in the default list, so a study of a subset
        # reuses the models a full study trained (the cache key holds the seed)
        offset = DEFAULT_VICTIMS_224.index(arch) if arch in DEFAULT_VICTIMS_224 else i
        trained = train_cached(arch, train, val, study.epochs, study.seed + offset,
                               cache, "victim", progress=study.progress,
                               recipe=study.victim_recipe)
        black[arch], clean_val[arch] = trained.model.eval(), round(trained.val_score, 4)
        log_progress(study, f"victim {arch}: val {trained.val_score:.3f} "
                    f"({'cached' if trained.cached else f'{time.monotonic() - t0:.0f}s'})")
    return black, clean_val


def _budget_row(study: TransferStudy, scorer: Scorer, test: ImageSet, eps: float,
                cache: Path, examples: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One point of the frontier: quality, accuracies and every test-time defence."""
    log_progress(study, f"budget {eps * 255:.0f}/255 on {len(test)} test images")
    protected, seconds = _protect(study, test.images, eps, {}, cache)
    examples[f"{eps * 255:.0f}/255"] = protected[:3]
    row: dict[str, Any] = {"epsilon": eps, "epsilon_255": round(eps * 255, 2),
           "psnr_db": round(psnr(test.images, protected), 2),
           "ssim": round(ssim(test.images, protected), 4),
           "max_abs_change_255": round(float((protected - test.images).abs().max()) * 255),
           "seconds_per_image": round(seconds, 3),
           "protected": scorer.summary(protected),
           "defences": {}}
    for name in DEFENCES:
        transformed = defences.TEST_TIME[name](protected)
        row["defences"][name] = scorer.summary(transformed)
        row["defences"][name]["on_clean"] = scorer.accuracies(
            defences.TEST_TIME[name](test.images))
    log_progress(study, f"  PSNR {row['psnr_db']} dB, white-box acc "
                f"{row['protected']['white_box_accuracy']}, black-box retained skill "
                f"{row['protected']['black_box_retained_skill']}")
    return row


def ensemble_labels(ensembles: Sequence[Sequence[Path]]) -> list[str]:
    """The ablation's name for each ensemble: its files' stems joined by ``+``, or, where two
    ensembles would get the same name (the same file names in other folders), ``folder/stem``."""
    def label(files: Sequence[Path], folder: bool) -> str:
        return "ensemble " + " + ".join(f"{p.parent.name}/{p.stem}" if folder else p.stem
                                        for p in files)
    plain = [label(files, False) for files in ensembles]
    return [label(files, True) if plain.count(name) > 1 else name
            for files, name in zip(ensembles, plain, strict=True)]


def _ablation(study: TransferStudy, white: dict[str, Any], black: dict[str, Any],
              test: ImageSet, cache: Path) -> list[dict[str, Any]]:
    """Each lever (and each surrogate ensemble) alone at the ablation budget, on a subset."""
    rows = list(study.ablation) + [
        (label, {"surrogates": [str(p) for p in files]})
        for label, files in zip(ensemble_labels(study.ablation_ensembles),
                                study.ablation_ensembles, strict=True)]
    if not rows:
        return []
    sub = subset(test, study.ablation_images, study.seed + 1)
    sub_scorer = Scorer(white, black, sub)
    out = []
    for label, extra in rows:
        log_progress(study, f"ablation: {label}")
        protected, seconds = _protect(study, sub.images, study.ablation_budget, extra, cache)
        summary = sub_scorer.summary(protected)
        out.append({
            "lever": label, "images": len(sub),
            "options": {k: ([Path(p).name for p in v] if k == "surrogates" else v)
                        for k, v in extra.items()},
            "epsilon_255": round(study.ablation_budget * 255, 2),
            "seconds_per_image": round(seconds, 3),
            "white_box_accuracy": summary["white_box_accuracy"],
            "black_box_retained_skill": summary["black_box_retained_skill"],
            "worst_black_box_retained_skill": summary["worst_black_box_retained_skill"],
            "black_box_retained_skill_floor0": summary["black_box_retained_skill_floor0"],
            "retained_skill": summary["retained_skill"],
            "after_jpeg75": sub_scorer.summary(defences.jpeg(protected, 75))[
                "black_box_retained_skill"]})
        log_progress(study, f"  black-box retained skill {summary['black_box_retained_skill']}, "
                    f"{seconds:.2f} s/image")
    return out

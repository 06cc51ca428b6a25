"""Issue 5 (d): the evaluation harness end to end on a tiny configuration (few images, one
epoch), through the real CLI: the report's structure, and numbers that are computed (they are
recomputed here from the cached models and the data, and change with the data)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from peers_data import require_shared_data

TINY = ["--epochs", "1", "--train-images", "96", "--test-images", "32",
        "--watermark-images", "3", "--removal-epochs", "1",
        "--victims", "plain-cnn,mobilenetv3-small", "--surrogates", "cnn-small", "-q"]
PROFILES = ["--profile", "adversarial_perturbation:epsilon=0.0314,steps=5",
            "--profile", "adversarial_watermark:generations=2,texture_steps=2,population=16",
            "--profile", "unlearnable:rounds=1,train_steps=2,pgd_steps=2"]


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "evaluate", *args],
                          check=False, capture_output=True, text=True, timeout=500)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    data = require_shared_data()
    out = tmp_path_factory.mktemp("eval")
    done = _evaluate("--dataset", "pneumoniamnist", "--data-dir", str(data),
                     "--out", str(out / "report"), *TINY, *PROFILES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report in" in done.stdout and "targets met" in done.stdout
    return data, out, json.loads((out / "report" / "results.json").read_text())


def test_report_structure(tiny_run: tuple[Path, Path, dict]) -> None:
    _, out, results = tiny_run
    report = out / "report"
    assert results["dataset"] == {**results["dataset"], "name": "pneumoniamnist",
                                  "task": "classification", "train": 96, "test": 32}
    assert results["settings"]["white_box"] == ["cnn-small"]
    assert results["settings"]["black_box"] == ["plain-cnn", "mobilenetv3-small"]
    labels = [p.split(" ")[0] for p in PROFILES[1::2]]
    assert list(results["methods"]) == labels
    perturbation, watermark, unlearnable = (results["methods"][label] for label in labels)
    for r in (perturbation, watermark):
        assert set(r["protected"]["per_victim"]) == {"cnn-small", "plain-cnn",
                                                     "mobilenetv3-small"}
        assert {"jpeg90", "jpeg75", "jpeg50", "median3", "gaussian1", "bits4",
                "resize_crop"} <= set(r["defences"])
    assert {"blank_box", "inpaint_box", "removal_network"} <= set(watermark["defences"])
    assert watermark["images"] == 3
    assert watermark["keepout_overlap_pixels"]["total"] == 0
    assert 0 < watermark["logo_area_fraction"]["max"] <= 1 / 16 + 1e-9
    assert watermark["quality"]["changed_outside_footprint"] == 0
    assert set(unlearnable["defences"]) == {"jpeg75_training", "iss_jpeg10",
                                            "adversarial_training"}
    assert unlearnable["images"] == 96 + 96  # train and val are released, both protected
    for r in results["methods"].values():
        assert r["seconds_per_image"] > 0
        assert 0 < r["quality"]["ssim"] < 1
    # retained skill: (accuracy - chance) / (clean - chance), chance the majority class
    chance = perturbation["protected"]["chance"]
    assert 0.5 <= chance < 1  # two classes: the majority is at least half
    clean = results["clean"]["per_victim"]
    skills = {v: (a - chance) / (clean[v] - chance)
              for v, a in perturbation["protected"]["per_victim"].items()
              if clean[v] - chance >= 0.10}
    for v, skill in skills.items():
        assert perturbation["protected"]["retained_skill"][v] == pytest.approx(skill, abs=1e-4)
    black = [skills[v] for v in results["settings"]["black_box"] if v in skills]
    if black:
        assert perturbation["protected"]["black_box_retained_skill"] == pytest.approx(
            sum(black) / len(black), abs=1e-3)
    tp = unlearnable["trained_on_protected"]
    for v, a in tp["per_victim"].items():
        if clean[v] - chance >= 0.10:
            assert tp["retained_skill"][v] == pytest.approx(
                (a - chance) / (clean[v] - chance), abs=1e-4)
    # every target row is consistent with its measured number
    assert results["targets"]
    for t in results["targets"]:
        ok = t["measured"] <= t["bound"] if t["direction"] == "<=" else t["measured"] >= t["bound"]
        assert t["met"] == ok
    text = (report / "report.md").read_text()
    for heading in ("## Targets", "## Clean models", *(f"## {label}" for label in labels)):
        assert heading in text
    assert "Next to the seed papers" in text and "45.83" in text
    for plot in results["plots"]:
        assert (report / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in text
    assert len(results["plots"]) == 6  # a bar chart and an example sheet per method


def test_numbers_are_computed(tiny_run: tuple[Path, Path, dict]) -> None:
    """The clean accuracies equal what the cached models score on the test split, and the
    perturbation's PSNR follows from its budget: 8/255 sign steps cannot exceed 8 levels."""
    import torch

    from dicom_gateway.lab.evaluation.data import load_dataset
    from dicom_gateway.lab.evaluation.scoring import cap
    from dicom_gateway.lab.evaluation.victims import build
    from dicom_gateway.lab.train import accuracy

    data, out, results = tiny_run
    splits = load_dataset("pneumoniamnist", data)
    train = cap(splits.train, 96, 0)
    test = cap(splits.test, 32, 0)
    cache = out / "report" / "cache"
    for arch in ("cnn-small", "plain-cnn", "mobilenetv3-small"):
        files = [p for p in cache.glob(f"{arch}-*.pt")]
        scores = set()
        for f in files:
            model = build(arch, train)
            model.load_state_dict(torch.load(f, weights_only=True)["state_dict"])
            scores.add(round(accuracy(model.eval(), test.images, test.labels), 4))
        assert results["clean"]["per_victim"][arch] in scores
    p = results["methods"]["adversarial_perturbation:epsilon=0.0314,steps=5"]
    assert p["quality"]["max_abs_change_8bit"] <= 8
    assert p["quality"]["psnr_db"] >= 20 * math.log10(255 / 8) - 0.01


def test_rerun_reuses_models_and_seed_changes_numbers(tiny_run: tuple[Path, Path, dict]) -> None:
    data, out, first = tiny_run
    again = _evaluate("--dataset", "pneumoniamnist", "--data-dir", str(data),
                      "--out", str(out / "report"), *TINY, PROFILES[0], PROFILES[1])
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((out / "report" / "results.json").read_text())
    assert all(rerun["clean"]["cached"].values())
    assert rerun["clean"]["per_victim"] == first["clean"]["per_victim"]
    other = _evaluate("--dataset", "pneumoniamnist", "--data-dir", str(data),
                      "--out", str(out / "seed1"), *TINY, "--seed", "1", PROFILES[0],
                      PROFILES[1])
    assert other.returncode == 0, other.stderr[-3000:]
    seeded = json.loads((out / "seed1" / "results.json").read_text())
    assert not any(seeded["clean"]["cached"].values())
    changed = [k for k in first["clean"]["val"] if seeded["clean"]["val"][k] !=
               first["clean"]["val"][k]]
    p0 = first["methods"][PROFILES[1]]["quality"]["psnr_db"]
    p1 = seeded["methods"][PROFILES[1]]["quality"]["psnr_db"]
    assert changed or p0 != p1  # other seeds, other models and other perturbations


def test_segmentation_set_runs_unlearnable_only(tmp_path: Path) -> None:
    data = require_shared_data()
    if not (data / "segmentation" / "msd_lung_2mm_patches").is_dir():
        pytest.skip("MSD lung patches absent from the shared data")
    done = _evaluate("--dataset", "msd-lung", "--data-dir", str(data), "--out", str(tmp_path),
                     "--epochs", "1", "--train-images", "24", "--test-images", "16", "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metric"] == "dice"
    assert list(results["methods"]) == ["unlearnable"]
    assert set(results["skipped"]) == {"adversarial_perturbation", "adversarial_watermark"}
    u = results["methods"]["unlearnable"]
    assert set(u["trained_on_protected"]["per_victim"]) == {"unet-small", "fcn-small"}
    assert {t["target"].split(": ", 1)[1] for t in results["targets"]} == {
        "Dice of victims trained on protected data / clean"}


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    (["--dataset", "retinamnist", "--profile", "blur"], "unknown method"),
    (["--dataset", "retinamnist", "--profile", "unlearnable:rounds"], "expected key=value"),
])
def test_bad_arguments_get_a_clear_answer(tmp_path: Path, args: list[str], message: str) -> None:
    done = _evaluate(*args, "--out", str(tmp_path))
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_targets_are_in_retained_skill() -> None:
    """The targets read retained skill, take the attacker's strongest filter, and leave
    RetinaMNIST (clean models near chance) without targets."""
    from dicom_gateway.lab.evaluation.targets import targets

    defences = {"jpeg75": {"black_box_retained_skill": 0.1},
                "median3": {"black_box_retained_skill": 0.2},
                "gaussian1": {"black_box_retained_skill": 0.5},
                "resize_crop": {"black_box_retained_skill": None}}
    run = {"dataset": {"name": "pneumoniamnist"}, "metric": "accuracy", "methods": {
        "p": {"method": "adversarial_perturbation", "defences": defences,
              "protected": {"white_box_mean": 0.3, "black_box_retained_skill": 0.25}}}}
    got = {t["target"]: (t["measured"], t["met"], t["gap"]) for t in targets(run)}
    assert got == {"p: white-box accuracy": (0.3, False, 0.25),
                   "p: black-box retained skill": (0.25, False, 0.05),
                   "p: after JPEG q75, black-box retained skill": (0.1, True, 0.0),
                   "p: after the strongest of median, Gaussian, resize-crop": (0.5, False, 0.15)}
    assert targets({**run, "dataset": {"name": "retinamnist"}}) == []

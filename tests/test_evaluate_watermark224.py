"""The watermark's transfer study (issue 12 item 5) end to end on a tiny set: marks through the
gateway's code path, the footprint from the certificates, the keep-out and area constraints
measured, the attacks scored, and the figures computed from what the models answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peers import medmnist_npz

torch = pytest.importorskip("torch")

_TINY = "population=8,generations=2,texture_steps=2,jpeg=false"


def test_watermark_transfer_study_reports_computed_figures(
        tmp_path: Path, surrogates: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_gateway.cli import main
    from dicom_gateway.lab.evaluation.scoring import retained_skill

    medmnist_npz("pneumoniamnist_balanced.npz")
    cache = tmp_path / "cache"
    base = ["evaluate", "--dataset", "pneumoniamnist", "--surrogate-files",
            str(surrogates["pneumonia"]), "--victims", "plain-cnn", "--test-images", "12",
            "--removal-epochs", "1", "--cache", str(cache), "-q",
            "--profile", f"adversarial_watermark:texture=0,{_TINY}",  # flat: no texture stage
            "--profile", f"adversarial_watermark:texture=1,alpha_min=1,{_TINY}"]  # a patch
    assert main([*base, "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    chance = one["chance"]
    row = one["rows"][0]
    assert [r["patch_bound"] for r in one["rows"]] == [False, True]
    assert row["images"] == 12 and row["area_fraction"]["max"] <= 1 / 16 + 1e-9
    assert row["keepout_overlap_pixels"]["total"] == 0
    assert row["changed_outside_footprint"] == 0  # the footprint is rendered right
    assert row["area_fraction"]["mean"] > 0 and row["psnr_db"] < 60  # marks were put on
    for summary in (row["protected"], *row["attacks"].values()):
        acc = summary["accuracy"]["plain-cnn"]
        assert summary["retained_skill"]["plain-cnn"] == pytest.approx(
            retained_skill(acc, one["clean"]["test_accuracy"]["plain-cnn"], chance), abs=1e-3)
    assert set(row["attacks"]) >= {"blank_box", "inpaint_box", "removal_network", "jpeg75"}
    removal = one["removal_network"][0]
    assert removal["pairs"] == 500 and removal["epochs"] == 1
    targets = {t["target"]: t for t in one["targets"]}
    assert targets["white-box accuracy"]["measured"] == row["protected"]["white_box_accuracy"]
    assert "after the removal network, black-box retained skill" in targets
    report = (tmp_path / "one" / "report.md").read_text()
    assert report.startswith("# Transfer of `adversarial_watermark`")
    assert "patch (upper bound)" in report and "removal_network" in report

    # another victim (trained 2 epochs, not 1): the same marks (from the cache), its own figures
    assert main([*base, "--epochs", "2", "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["clean"]["val_accuracy"] != one["clean"]["val_accuracy"]
    assert [r["psnr_db"] for r in two["rows"]] == [r["psnr_db"] for r in one["rows"]]
    for r in two["rows"]:
        acc = r["protected"]["accuracy"]["plain-cnn"]
        assert r["protected"]["black_box_retained_skill"] == pytest.approx(
            retained_skill(acc, two["clean"]["test_accuracy"]["plain-cnn"], chance), abs=1e-3)
        assert r["protected"]["worst_black_box_retained_skill"] == pytest.approx(
            r["protected"]["black_box_retained_skill"])
    capsys.readouterr()


def test_watermark_transfer_study_refuses_other_methods(
        tmp_path: Path, surrogates: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_gateway.cli import main

    args = ["evaluate", "--dataset", "pneumoniamnist", "--surrogate-files",
            str(surrogates["pneumonia"]), "--out", str(tmp_path / "out")]
    assert main([*args, "--profile", "adversarial_perturbation"]) == 1
    assert "names adversarial_watermark settings" in capsys.readouterr().err
    assert main([*args, "--profile", "adversarial_watermark", "--ablation"]) == 1
    assert "perturbation's transfer study only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""One unit and one set of defaults for the unlearnable settings, whichever entry point is used
(issue 16, item 2), and a report that names only the settings that applied (item 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from gwutil import base_config, sample_series

from dicom_gateway.cli import main
from dicom_gateway.config import parse_config
from dicom_gateway.errors import ConfigError

torch = pytest.importorskip("torch")

BUNDLED = Path(__file__).parents[1] / "dicom_gateway" / "defaults" / "pneumonia-cnn-small.pt"
SEGMENTATION_ONLY = {"contour_radius", "texture_floor", "init"}
MIN_MIN_ONLY = {"train_steps", "pgd_steps", "lr"}


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _class_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(4):
        _png(root / "bright" / f"{i}.png", rng.integers(150, 255, (16, 16), np.uint8))
        _png(root / "dark" / f"{i}.png", rng.integers(0, 100, (16, 16), np.uint8))
    return root


def _mask_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for i in range(4):
        disc = (yy - 8) ** 2 + (xx - 6 - i) ** 2 < 16
        _png(root / "images" / f"{i}.png", np.where(disc, 220, rng.integers(0, 90, (16, 16)))
             .astype(np.uint8))
        _png(root / "masks" / f"{i}.png", (disc * 255).astype(np.uint8))
    return root


@pytest.mark.parametrize("text, fraction", [("8/255", 8 / 255), (" 7/255 ", 7 / 255),
                                            ("0.0314", 0.0314), (0.0314, 0.0314),
                                            (8 / 255, 8 / 255), ("0.25", 0.25)])
def test_epsilon_is_a_fraction_or_n_over_255(text: Any, fraction: float) -> None:
    from dicom_gateway.protect.options import parse_epsilon

    assert parse_epsilon(text) == pytest.approx(fraction)


@pytest.mark.parametrize("text, says", [("8", "a bare N is a fraction, not N/255"),
                                        (8, "a bare N is a fraction"), ("0", "is not"),
                                        ("8/100", "N/255"), ("eight", "is not"),
                                        (True, "is not"), ("1/0", "is not")])
def test_epsilon_in_another_unit_is_refused_with_the_accepted_forms(text: Any, says: str) -> None:
    from dicom_gateway.protect.options import parse_epsilon

    with pytest.raises(ValueError, match="N/255") as err:
        parse_epsilon(text)
    assert says in str(err.value)


@pytest.mark.parametrize("method", ["adversarial_perturbation", "unlearnable"])
def test_a_profile_takes_epsilon_as_n_over_255(tmp_path: Path, method: str) -> None:
    raw = base_config(tmp_path / "spool", [], [])
    label = {"label_tag": "Modality", "classes": ["CT", "XA"]} if method == "unlearnable" else {}
    raw["profiles"]["p"] = {"method": method, "surrogates": [str(BUNDLED)], "epsilon": "8/255",
                            **label}
    options = parse_config(raw, "<test>").profiles["p"].options
    assert options.epsilon == pytest.approx(8 / 255)  # type: ignore[attr-defined]  # a fraction
    raw["profiles"]["p"]["epsilon"] = 8  # the old protect-dataset unit: refused, not 8.0
    with pytest.raises(ConfigError, match=r"profiles\.p\.epsilon: .*a bare N is a fraction"):
        parse_config(raw, "<test>")


def test_protect_dataset_takes_the_same_epsilon_forms(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_gateway.lab import dataset_job

    jobs: list[Any] = []
    monkeypatch.setattr(dataset_job, "protect_dataset", lambda job: jobs.append(job) or {
        "images": 0, "task": "classification", "written": "", "psnr_db": 0.0, "rounds": 0,
        "surrogate_final_loss": None, "seconds": 0.0})
    data = _class_folders(tmp_path / "cls")
    for text, fraction in (("8/255", 8 / 255), ("0.0275", 0.0275)):
        assert main(["protect-dataset", "--data", str(data), "--out", str(tmp_path / "o"),
                     "--epsilon", text]) == 0
        assert jobs[-1].epsilon == pytest.approx(fraction)
    with pytest.raises(SystemExit) as exit_:
        main(["protect-dataset", "--data", str(data), "--out", str(tmp_path / "o"),
              "--epsilon", "8"])
    assert exit_.value.code == 2 and "a bare N is a fraction, not N/255" in capsys.readouterr().err


def _recording(calls: list[dict[str, Any]]) -> Any:
    """A stand-in for the min-min loop that records the settings it was given."""
    from dicom_gateway.protect.unlearnable import UnlearnableResult

    def run(x: Any, targets: Any, budget: Any, model: Any, **settings: Any) -> Any:
        calls.append({"epsilon": float(budget.max()), "rounds": settings["rounds"],
                      "train_steps": settings["train_steps"],
                      "pgd_steps": settings["pgd_steps"], "lr": settings["lr"]})
        return UnlearnableResult(torch.zeros_like(x), settings["rounds"], 0.0, 0)
    return run


def test_protect_dataset_and_a_profile_share_their_defaults(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The same classification settings reach the min-min loop from a profile left at its
    defaults and from ``protect-dataset`` without flags."""
    from dicom_gateway.lab import dataset_job
    from dicom_gateway.protect import unlearnable

    gateway: list[dict[str, Any]] = []
    monkeypatch.setattr(unlearnable, "error_minimizing_noise", _recording(gateway))
    files = sample_series(tmp_path / "ct", 2)
    method = unlearnable.Unlearnable({"surrogates": [str(BUNDLED)], "label_tag": "Modality",
                                      "classes": ["CT", "XA"]})
    assert all(o.error is None for o in method(files))
    release: list[dict[str, Any]] = []
    monkeypatch.setattr(dataset_job, "error_minimizing_noise", _recording(release))
    assert main(["protect-dataset", "--data", str(_class_folders(tmp_path / "cls")),
                 "--out", str(tmp_path / "out")]) == 0
    assert len(gateway) == len(release) == 1
    assert release[0] == pytest.approx(gateway[0])
    assert gateway[0]["rounds"] == unlearnable.default_rounds(segmentation=False)


def test_the_report_names_only_the_settings_that_applied(tmp_path: Path) -> None:
    quick = ["--rounds", "1", "--train-steps", "1", "--pgd-steps", "1"]
    assert main(["protect-dataset", "--data", str(_class_folders(tmp_path / "cls")),
                 "--out", str(tmp_path / "cls-out"), *quick]) == 0
    report = json.loads((tmp_path / "cls-out" / "report.json").read_text())
    assert report["task"] == "classification" and report["rounds"] >= 1
    assert not SEGMENTATION_ONLY & set(report)  # a classification budget is uniform
    assert set(report) >= MIN_MIN_ONLY and report["train_steps"] == 1
    assert main(["protect-dataset", "--data", str(_mask_folders(tmp_path / "seg")),
                 "--out", str(tmp_path / "seg-out")]) == 0  # default: 0 rounds
    report = json.loads((tmp_path / "seg-out" / "report.json").read_text())
    assert report["task"] == "segmentation" and report["rounds"] == 0
    assert set(report) >= SEGMENTATION_ONLY and report["init"] == "pattern"
    assert not MIN_MIN_ONLY & set(report)  # no min-min round ran


def test_the_seal_parameters_name_only_the_settings_that_applied(tmp_path: Path) -> None:
    from dicom_gateway.protect.unlearnable import Unlearnable

    files = sample_series(tmp_path / "ct", 2)
    method = Unlearnable({"surrogates": [str(BUNDLED)], "label_tag": "Modality",
                          "classes": ["CT", "XA"], "rounds": 1, "train_steps": 1,
                          "pgd_steps": 1})
    outcome = method(files)[0]
    assert outcome.error is None and pydicom.dcmread(files[0]).Modality == "CT"
    assert not SEGMENTATION_ONLY & set(outcome.parameters)
    assert outcome.parameters["epsilon"] == pytest.approx(8 / 255)
    assert outcome.parameters["train_steps"] == 1

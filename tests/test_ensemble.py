"""``train-surrogate --ensemble``: the recommended ensemble in one command, resumable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from dicom_gateway.lab.ensemble import recipe


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_gateway.cli", *args],
                          capture_output=True, text=True, timeout=600)


def _classes(folder: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for i in range(24):
        for name, (lo, hi) in (("bright", (150, 255)), ("dark", (0, 100))):
            path = folder / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(lo, hi, (20, 20), np.uint8)).save(path)


def test_the_recipe_follows_the_image_size() -> None:
    """Thumbnails get the small CNN's ensemble; 224x224 the four families of the evaluation
    plus LGV snapshots; the ViT, which takes 224x224 only, is left out at other sizes."""
    assert [m.name for m in recipe(28, 28)] == ["cnn-small", "cnn-small-adv1", "resnet18-adv1",
                                               "cnn-small-lgv"]
    assert [m.name for m in recipe(224, 224)] == ["resnet10", "resnet10-adv1", "vit-tiny-adv1",
                                                 "convnext-nano-adv1", "resnet10-lgv"]
    assert "vit-tiny-adv1" not in [m.name for m in recipe(256, 256)]
    assert sum(len(m.files()) for m in recipe(224, 224)) == 8


def test_one_command_trains_the_ensemble_and_a_rerun_keeps_it(tmp_path: Path) -> None:
    from dicom_gateway.protect.surrogate import load_surrogate

    _classes(tmp_path / "cls")
    out = tmp_path / "models"
    args = ("train-surrogate", "--data", str(tmp_path / "cls"), "--ensemble", "--epochs", "1",
            "--out", str(out))
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "ensemble.json").read_text())
    files = [f for m in manifest["members"].values() for f in m["files"]]
    assert len(files) == 7 and f"surrogates: [{out / 'cnn-small.pt'}" in done.stdout
    loaded = {f: load_surrogate(out / f) for f in files}
    assert loaded["cnn-small.pt"].info.training["adversarial_epsilon"] == 0
    assert loaded["resnet18-adv1.pt"].info.arch == "resnet18"
    assert loaded["resnet18-adv1.pt"].info.training["adversarial_epsilon"] > 0
    assert loaded["cnn-small-adv1.pt"].info.training["init"] == loaded["cnn-small.pt"].sha256
    lgv = [s for f, s in loaded.items() if f.startswith("cnn-small-lgv-")]
    assert len(lgv) == 4 and all(s.info.training["lgv"]["init"] == loaded["cnn-small.pt"].sha256
                                 for s in lgv)

    again = _cli(*args)  # nothing to do: every member kept, no file touched
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("(kept)") == 4 and "(trained)" not in again.stdout
    assert {f: load_surrogate(out / f).sha256 for f in files} == {
        f: s.sha256 for f, s in loaded.items()}

    (out / "resnet18-adv1.pt").write_bytes(b"cut short")  # an interrupted member
    mended = _cli(*args)
    assert mended.returncode == 0, mended.stderr
    assert "resnet18-adv1: 1 file(s)" in mended.stdout
    assert mended.stdout.count("(kept)") == 3 and mended.stdout.count("(trained)") == 1
    assert load_surrogate(out / "resnet18-adv1.pt").info.arch == "resnet18"

    other = _cli(*args[:-4], "--epochs", "2", "--out", str(out))  # other settings, same folder
    assert other.returncode != 0 and "other settings" in other.stderr
    mixed = _cli(*args[:-2], "--arch", "resnet18", "--out", str(tmp_path / "x"))
    assert mixed.returncode != 0 and "--arch" in mixed.stderr
    for refused in (other, mixed):
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

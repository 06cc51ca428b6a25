"""Surrogate files: folder layouts for ``train-surrogate`` and users' TorchScript models."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_gateway.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_train_surrogate_reads_image_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(12):  # class folders: bright vs dark squares
        _png(tmp_path / "cls" / "bright" / f"{i}.png", rng.integers(150, 255, (20, 20), np.uint8))
        _png(tmp_path / "cls" / "dark" / f"{i}.png", rng.integers(0, 100, (20, 20), np.uint8))
    for i in range(12):  # flat folder with masks: a bright disc on noise
        yy, xx = np.mgrid[:24, :24]
        disc = (yy - 8 - i // 2) ** 2 + (xx - 12) ** 2 < 25
        image = np.where(disc, 220, rng.integers(0, 90, (24, 24))).astype(np.uint8)
        _png(tmp_path / "seg" / f"img{i}.png", np.stack([image] * 3, -1))
        _png(tmp_path / "seg" / f"img{i}_1stHO.png", (disc * 255).astype(np.uint8))
        # a second observer's mask beside it (as in CHASE_DB1): an annotation, not an image
        _png(tmp_path / "seg" / f"img{i}_2ndHO.png", (disc * 255).astype(np.uint8))
    done = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--epochs", "3",
                "--out", str(tmp_path / "c.pt"))
    assert done.returncode == 0, done.stderr
    assert "cnn-small 20x20x1, 2 classes, val accuracy" in done.stdout
    done = _cli("train-surrogate", "--data", str(tmp_path / "seg"), "--task", "segmentation",
                "--mask-suffix", "_1stHO", "--epochs", "2", "--out", str(tmp_path / "s.pt"))
    assert done.returncode == 0, done.stderr
    assert "unet-small 24x24x3, 2 classes, val dice" in done.stdout
    wrong = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--task", "segmentation",
                 "--arch", "cnn-small", "--out", str(tmp_path / "x.pt"))
    assert wrong.returncode == 1 and "classification architecture" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_one_command_and_seed_make_the_same_weights(tmp_path: Path) -> None:
    """Each process seeds torch's default generator from the OS: ``--seed`` must fix the
    initial weights too, not only the data order, or a report's command makes another model
    (and a test's figure moves from run to run)."""
    from dicom_gateway.protect.surrogate import load_surrogate

    rng = np.random.default_rng(1)
    for i in range(16):
        _png(tmp_path / "cls" / "bright" / f"{i}.png", rng.integers(120, 255, (16, 16), np.uint8))
        _png(tmp_path / "cls" / "dark" / f"{i}.png", rng.integers(0, 130, (16, 16), np.uint8))
    weights = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        done = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--epochs", "1",
                    "--seed", seed, "--out", str(tmp_path / f"{name}.pt"))
        assert done.returncode == 0, done.stderr
        weights.append(load_surrogate(tmp_path / f"{name}.pt").model.state_dict())
    same, other = weights[0], weights[1]
    assert all(torch.equal(same[k], other[k]) for k in same)
    assert not all(torch.equal(same[k], weights[2][k]) for k in same)


def test_train_surrogate_at_a_smaller_size_sees_what_the_gateway_view_gives_it(
        tmp_path: Path) -> None:
    """``--size``: a surrogate trained on reductions of stored images (as a site with
    radiographs of two thousand pixels trains at 224) gets the same reduction from the
    gateway's view of the stored image, so the protection stays at the stored size."""
    from dicom_gateway.lab.datasets import resize_images
    from dicom_gateway.lab.evaluation.gateway_path import wrap_as_dicom
    from dicom_gateway.protect.perturbation import adapt
    from dicom_gateway.protect.surrogate import load_surrogate
    from dicom_gateway.protect.view import prepare

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :48]
    stored = []
    for i in range(16):  # a bright disc (left or right) on noise, stored at 48 x 48
        for name, cx in (("left", 14), ("right", 34)):
            disc = (yy - 24) ** 2 + (xx - cx) ** 2 < 60
            image = np.where(disc, 210, rng.integers(0, 120, (48, 48))).astype(np.uint8)
            _png(tmp_path / "cls" / name / f"{i}.png", image)
            stored.append(image)
    done = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--size", "16",
                "--epochs", "3", "--out", str(tmp_path / "c.pt"))
    assert done.returncode == 0, done.stderr
    assert "cnn-small 16x16x1, 2 classes" in done.stdout
    s = load_surrogate(tmp_path / "c.pt")
    assert s.info.input_size == (16, 16) and s.info.training["resized_to"] == 16
    x = torch.from_numpy(np.stack(stored)[:, None]).float() / 255
    views = [prepare(p) for p in wrap_as_dicom(x, tmp_path / "dicom")]
    seen = torch.from_numpy(np.concatenate([v.values for v in views]).transpose(0, 3, 1, 2))
    assert seen.shape[2:] == (48, 48)  # the gateway reads (and protects) the stored size
    with torch.no_grad():
        through = adapt(seen.float(), s)
    trained_on = resize_images(x, 16)
    assert through.shape == trained_on.shape
    assert float((through - trained_on).abs().max()) <= 0.6 / 255  # 8-bit rounding apart
    with torch.no_grad():
        agree = (s.model(through).argmax(1) == s.model(trained_on).argmax(1)).float().mean()
    assert float(agree) >= 0.95
    small = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--size", "4",
                 "--out", str(tmp_path / "x.pt"))
    assert small.returncode != 0 and "--size 4" in small.stderr
    assert "Traceback" not in small.stderr
    lgv = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--init",
               str(tmp_path / "c.pt"), "--snapshots", "1", "--epochs", "1",
               "--out", str(tmp_path / "lgv.pt"))  # snapshots train at the start's size
    assert lgv.returncode != 0 and "takes 16x16 images" in lgv.stderr
    assert "--size 16" in lgv.stderr and "Traceback" not in lgv.stderr


def test_torchscript_model_with_description(tmp_path: Path) -> None:
    from dicom_gateway.errors import SurrogateError
    from dicom_gateway.protect.surrogate import load_surrogate

    body = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))
    scripted = torch.jit.script(body)
    description = {"task": "classification", "input_size": [32, 32], "channels": 1,
                   "classes": ["a", "b", "c"]}
    inside = tmp_path / "inside.pt"
    torch.jit.save(scripted, str(inside), _extra_files={
        "dicom-gateway.json": json.dumps(description)})
    s = load_surrogate(inside)
    assert s.info.arch == "torchscript" and s.info.classes == ("a", "b", "c")
    assert s.model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    assert len(s.sha256) == 64
    bare = tmp_path / "bare.pt"
    torch.jit.save(scripted, str(bare))
    with pytest.raises(SurrogateError, match="without a description"):
        load_surrogate(bare)
    (tmp_path / "bare.json").write_text(json.dumps({**description, "mean": [0.5], "std": [0.2]}))
    assert load_surrogate(bare).info.mean == (0.5,)


@pytest.mark.parametrize("arch, channels, size", [
    ("vit-tiny", 1, 224), ("vit-tiny", 3, 224), ("convnext-nano", 1, 224),
    ("mobilenetv3-small", 1, 28), ("efficientnet-b0", 1, 28), ("densenet121", 3, 28)])
def test_another_family_surrogate_loads_and_gives_the_attack_a_gradient(
        tmp_path: Path, arch: str, channels: int, size: int) -> None:
    """``vit-tiny``, ``convnext-nano`` and the torchvision families (upsampled inside from
    thumbnails): saved, loaded back with the same outputs, and differentiable through the
    attack (grey images as three channels)."""
    from dicom_gateway.protect.perturbation import attack
    from dicom_gateway.protect.surrogate import (
        SurrogateInfo,
        build_model,
        load_surrogate,
        save_surrogate,
    )

    info = SurrogateInfo(arch, "classification", (size, size), channels, ("a", "b"),
                         (0.5,) * channels, (0.25,) * channels)
    torch.manual_seed(0)
    model = build_model(info).eval()
    with torch.no_grad():  # as if trained: torchvision starts the ViT's head at zero
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_surrogate(model, info, tmp_path / "vit.pt")
    loaded = load_surrogate(tmp_path / "vit.pt")
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        assert loaded.model(x).shape == (2, 2)
        assert torch.allclose(loaded.model(x), model(x), atol=1e-5)
    adv = attack(x, [loaded], epsilon=4 / 255, steps=2)
    assert 0 < float((adv - x).abs().max()) <= 4 / 255 + 1e-6


def test_lgv_snapshots_are_surrogates_along_the_trajectory(tmp_path: Path) -> None:
    """``train-surrogate --init FILE --snapshots N``: N files an epoch, each a loadable
    surrogate of FILE's architecture, moved away from FILE and from each other, with the
    recipe recorded (adversarially trained at the start's budget by default); without --init
    it is refused in one line."""
    from dicom_gateway.protect.surrogate import load_surrogate

    rng = np.random.default_rng(1)
    for i in range(24):
        _png(tmp_path / "cls" / "bright" / f"{i}.png", rng.integers(150, 255, (20, 20), np.uint8))
        _png(tmp_path / "cls" / "dark" / f"{i}.png", rng.integers(0, 100, (20, 20), np.uint8))
    done = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--epochs", "2",
                "--out", str(tmp_path / "base.pt"))
    assert done.returncode == 0, done.stderr
    done = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--init",
                str(tmp_path / "base.pt"), "--snapshots", "2", "--epochs", "2", "--lr", "0.05",
                "--out", str(tmp_path / "lgv.pt"))
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("lgv-*.pt"))
    assert [f.name for f in files] == ["lgv-01.pt", "lgv-02.pt", "lgv-03.pt", "lgv-04.pt"]
    base = load_surrogate(tmp_path / "base.pt")
    snaps = [load_surrogate(f) for f in files]
    assert {s.info.arch for s in snaps} == {base.info.arch}
    assert [s.info.training["lgv"]["snapshot"] for s in snaps] == [1, 2, 3, 4]
    assert all(s.info.training["lgv"]["init"] == base.sha256 for s in snaps)
    first = next(k for k in base.model.state_dict() if k.endswith("weight"))
    weights = [s.model.state_dict()[first] for s in [base, *snaps]]
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(weights))
    # the start is slightly robust (train-surrogate's default): so are its snapshots, unless
    # --adversarial-epsilon says otherwise (same seed: only the FGSM examples differ)
    robust = base.info.training["adversarial_epsilon"]
    assert robust > 0 and all(s.info.training["adversarial_epsilon"] == robust for s in snaps)
    done = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--init",
                str(tmp_path / "base.pt"), "--snapshots", "2", "--epochs", "1", "--lr", "0.05",
                "--adversarial-epsilon", "0", "--out", str(tmp_path / "plain.pt"))
    assert done.returncode == 0, done.stderr
    plain = load_surrogate(tmp_path / "plain-01.pt")
    assert plain.info.training["adversarial_epsilon"] == 0
    assert not torch.equal(plain.model.state_dict()[first], weights[1])
    refused = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--snapshots", "2",
                   "--out", str(tmp_path / "x.pt"))
    assert refused.returncode != 0 and "--init" in refused.stderr
    assert "Traceback" not in refused.stderr

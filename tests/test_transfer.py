"""The 224x224 evaluation path: split-tree data, one declared view, the transfer levers, and
the transfer study through the gateway's code path (issue 12)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from gwutil import option_problem
from peers import medmnist_npz, shared_data_dir
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

torch = pytest.importorskip("torch")


def _jpeg(value: int, rgb: bool = True) -> bytes:
    from PIL import Image

    arr = np.full((16, 16), value, dtype=np.uint8)
    arr[4:8, 4:8] = 255 - value
    img = Image.fromarray(np.stack([arr] * 3, -1) if rgb else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_split_tree_reads_a_tar_dedups_and_sees_grey_as_one_channel(tmp_path: Path) -> None:
    from dicom_gateway.lab.datasets import load_split_tree, stratified_split

    files = {f"dataset/train/{c}/{c}{i}.png": _jpeg(10 * i + (100 if c == "PNEU" else 0))
             for c in ("NORMAL", "PNEU") for i in range(10)}
    files["dataset/train/PNEU/copy.png"] = files["dataset/train/PNEU/PNEU3.png"]  # duplicate
    files["dataset/train/.DS_Store"] = b"\0\1junk"
    files.update({f"dataset/test/{c}/t{i}.png": _jpeg(7 * i + 1) for c in ("NORMAL", "PNEU")
                  for i in range(3)})
    splits = load_split_tree(_tar(tmp_path / "set.tar", files))
    assert set(splits) == {"train", "test"}
    train = splits["train"]
    assert train.images.shape == (20, 1, 16, 16)  # 21 files, one byte-identical copy dropped
    assert train.classes == ("NORMAL", "PNEU") and int(train.labels.sum()) == 10
    assert float(train.images[0, 0, 5, 5]) == pytest.approx(1.0)  # 255 - 0, read as /255
    rest, held = stratified_split(train, 0.2, seed=3)
    assert len(held) == 4 and int(held.labels.sum()) == 2 and len(rest) == 16
    again = stratified_split(train, 0.2, seed=3)[1]
    assert torch.equal(again.images, held.images)  # seeded


def test_kermany224_splits() -> None:
    from dicom_gateway.lab.evaluation.data import load_dataset

    base = shared_data_dir()
    tar = base / "classification/kermany_pneumonia_224/kermany_pneumonia_224.tar" if base else None
    if tar is None or not tar.is_file():
        pytest.skip("shared data absent: expected .../shared/data/classification/"
                    "kermany_pneumonia_224/kermany_pneumonia_224.tar")
    s = load_dataset("kermany224", base)
    # 5,216 train + 624 test files, 32 byte-identical pairs kept once
    assert len(s.train) + len(s.val) + len(s.test) == 5840 - 32
    assert s.resolution == (224, 224) and s.channels == 1
    assert s.train.classes == ("NORMAL", "PNEUMONIA")
    ratio = (float(s.train.labels.float().mean()), float(s.val.labels.float().mean()))
    assert abs(ratio[0] - ratio[1]) < 0.01  # stratified
    assert 500 <= len(s.val) <= 530


def _wrap_8bit(images: np.ndarray, folder: Path) -> list[Path]:
    from dicom_gateway.lab.evaluation.gateway_path import wrap_as_dicom

    return wrap_as_dicom(torch.from_numpy(images).float() / 255, folder)


def _wrap_ct(images: np.ndarray, folder: Path) -> list[Path]:
    """16-bit CT with a window whose range is exactly stored 0..4080 (= 16 x the 8-bit
    value), rescale intercept -1024: the view must give back value / 255."""
    folder.mkdir(parents=True)
    paths = []
    for i, img in enumerate(images):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "CT"
        ds.Rows, ds.Columns = img.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 1016, 4080  # stored 0 .. 4080
        ds.PixelData = (img[0].astype(np.uint16) * 16).tobytes()
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("wrap", [_wrap_8bit, _wrap_ct], ids=["8-bit-no-window", "ct-window"])
def test_gateway_view_gives_the_surrogate_its_training_view(tmp_path: Path, wrap: object,
                                                            surrogates: dict[str, Path]) -> None:
    from dicom_gateway.protect.perturbation import adapt
    from dicom_gateway.protect.surrogate import load_surrogate
    from dicom_gateway.protect.view import prepare

    with np.load(medmnist_npz("pneumoniamnist_balanced.npz")) as data:
        images = data["test_images"][:, None]
    s = load_surrogate(surrogates["pneumonia"])
    with torch.no_grad():
        direct = s.model(torch.from_numpy(images).float() / 255).argmax(1)
        views = [prepare(p) for p in wrap(images, tmp_path / "dicom")]  # type: ignore[operator]
        x = torch.from_numpy(np.concatenate([v.values for v in views]).transpose(0, 3, 1, 2))
        through = s.model(adapt(x.float(), s)).argmax(1)
    agreement = float((direct == through).float().mean())
    assert agreement >= 0.995, agreement


def test_a_surrogate_from_another_view_is_refused(tmp_path: Path,
                                                  surrogates: dict[str, Path]) -> None:
    from dicom_gateway.protect.surrogate import load_surrogate

    blob = torch.load(surrogates["pneumonia"], weights_only=True)
    blob["info"]["view"] = "per-image-min-max"
    torch.save(blob, tmp_path / "other.pt")
    from dicom_gateway.errors import SurrogateError

    with pytest.raises(SurrogateError, match=r"input view .per-image-min-max."):
        load_surrogate(tmp_path / "other.pt")


def test_retained_skill() -> None:
    from dicom_gateway.lab.evaluation.transfer import retained_skill

    assert retained_skill(0.9, 0.9, 0.6) == pytest.approx(1.0)
    assert retained_skill(0.6, 0.9, 0.6) == pytest.approx(0.0)
    assert retained_skill(0.3, 0.9, 0.6) == pytest.approx(-1.0)
    assert retained_skill(0.5, 0.6, 0.6) is None  # a clean model at chance has no skill


@pytest.mark.parametrize("extra", [{"smoothing": 5}, {"loss": "margin", "balance": True},
                                   {"scales": 2},
                                   {"transform": "augment", "diversity": 1.0, "copies": 2},
                                   # every view shuffled (diversity 1.0) leaves 0.58-0.59
                                   # of cnn-small's 0.98, at the 0.4 bar: the default mix
                                   {"transform": "block-shuffle", "diversity": 0.5},
                                   {"loss": "fia"}])
def test_transfer_levers_keep_the_budget_and_fool_the_surrogate(
        surrogates: dict[str, Path], extra: dict[str, object]) -> None:
    from dicom_gateway.lab.train import accuracy, load_npz_split
    from dicom_gateway.protect.perturbation import attack
    from dicom_gateway.protect.surrogate import load_surrogate

    assert option_problem("adversarial_perturbation", {"surrogates": [str(surrogates["pneumonia"])],
                                             **extra}) is None
    s = load_surrogate(surrogates["pneumonia"])
    x, y = load_npz_split(medmnist_npz("pneumoniamnist_balanced.npz"), "test")
    x, y = x[:64], y[:64]
    adv = attack(x, [s], epsilon=8 / 255, steps=10, **extra)  # type: ignore[arg-type]
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert accuracy(s.model, adv, y) < accuracy(s.model, x, y) - 0.4


def test_the_feature_loss_distorts_the_middle_layer_beyond_noise(
        surrogates: dict[str, Path]) -> None:
    """``loss: feature`` is label-free: it ascends the middle layer's distortion, and flips the
    label only as a side effect (on cnn-small at 28x28 about 0.35-0.4 of it, seed-dependent), so
    it is held to what it optimizes: far more distortion than sign noise of the same budget, and
    a lower accuracy than that noise leaves."""
    from dicom_gateway.lab.train import accuracy, load_npz_split
    from dicom_gateway.protect.features import captured, feature_layer
    from dicom_gateway.protect.perturbation import attack
    from dicom_gateway.protect.surrogate import load_surrogate

    s = load_surrogate(surrogates["pneumonia"])
    x, y = load_npz_split(medmnist_npz("pneumoniamnist_balanced.npz"), "test")
    x, y = x[:64], y[:64]
    layer = feature_layer(s)

    def middle(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), captured(layer) as seen:
            s.model(v)
        return seen[0].flatten(1)

    clean = middle(x)

    def distortion(v: torch.Tensor) -> float:
        return float(((middle(v) - clean).norm(dim=1) / clean.norm(dim=1)).mean())

    adv = attack(x, [s], epsilon=8 / 255, steps=10, loss="feature")
    g = torch.Generator().manual_seed(0)
    noise = (x + 8 / 255 * torch.sign(torch.rand(x.shape, generator=g) - 0.5)).clamp(0, 1)
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert distortion(adv) > 1.4 * distortion(noise)  # measured 0.46 against 0.26
    assert accuracy(s.model, adv, y) < accuracy(s.model, noise, y) - 0.2  # 0.63 against 0.97


def test_every_classification_architecture_has_a_middle_layer_for_the_feature_losses() -> None:
    from dicom_gateway.protect.features import FEATURE_LAYERS, captured, feature_layer
    from dicom_gateway.protect.surrogate import (
        ARCHITECTURES,
        SEGMENTATION_ARCHITECTURES,
        Surrogate,
        SurrogateInfo,
        build_model,
    )

    for arch in set(ARCHITECTURES) - SEGMENTATION_ARCHITECTURES:
        info = SurrogateInfo(arch=arch, task="classification", input_size=(224, 224),
                             channels=1, classes=("a", "b"), mean=(0.5,), std=(0.25,))
        model = build_model(info).eval()
        layer = feature_layer(Surrogate(model, info, ""))
        assert layer is not None, arch
        with torch.no_grad(), captured(layer) as seen:
            model(torch.rand(1, 1, 224, 224))
        assert len(seen) == 1 and seen[0].shape[0] == 1, (arch, FEATURE_LAYERS[arch])


@pytest.mark.parametrize("key, value", [("smoothing", -1), ("scales", 0.5), ("loss", "hinge"),
                                        ("balance", "yes"), ("transform", "mixup"),
                                        ("copies", 0)])
def test_new_attack_settings_are_checked(surrogates: dict[str, Path], key: str,
                                         value: object) -> None:

    options = {"surrogates": [str(surrogates["pneumonia"])], key: value}
    assert option_problem("adversarial_perturbation", options) == key


def test_transfer_study_reports_computed_figures(tmp_path: Path,
                                                 surrogates: dict[str, Path]) -> None:
    """A tiny study: the figures in results.json follow from the accuracies it measured."""
    from dicom_gateway.lab.evaluation.transfer import TransferStudy, retained_skill, run_transfer

    medmnist_npz("pneumoniamnist_balanced.npz")
    study = TransferStudy(dataset="pneumoniamnist", out=tmp_path / "report",
                          surrogate_files=(surrogates["pneumonia"],), victims=("plain-cnn",),
                          budgets=(8 / 255,), options={"steps": 5}, epochs=1, test_images=40,
                          ablation=[("TI 5", {"smoothing": 5})], ablation_images=20,
                          victim_recipe="light", progress=False)
    results = run_transfer(study)
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["frontier"][0]["epsilon_255"] == 8
    row = results["frontier"][0]
    chance, clean = results["chance"], results["clean"]["test_accuracy"]["plain-cnn"]
    acc = row["protected"]["accuracy"]["plain-cnn"]
    assert row["protected"]["black_box_retained_skill"] == pytest.approx(
        retained_skill(acc, clean, chance), abs=1e-3)
    victim = row["protected"]["retained_skill"]["plain-cnn"]  # the one victim: worst = it
    assert row["protected"]["worst_black_box_retained_skill"] == pytest.approx(victim)
    assert row["protected"]["black_box_retained_skill_floor0"] == pytest.approx(max(victim, 0))
    assert row["max_abs_change_255"] <= 8 and row["psnr_db"] > 28
    assert row["protected"]["white_box_accuracy"] < results["clean"]["test_accuracy"][
        f"surrogate:{surrogates['pneumonia'].stem}"]
    assert len(results["ablation"]) == 1 and results["ablation"][0]["images"] == 20
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| 8/255 |" in report and "retained skill" in report
    assert results["victim_recipe"] == "light" and "with the light recipe" in report
    assert {t["target"] for t in results["targets"]} >= {"8/255: black-box retained skill"}


def test_resize_images_is_an_8_bit_antialiased_reduction() -> None:
    from dicom_gateway.lab.datasets import resize_images

    x = torch.zeros(2, 1, 8, 8)
    x[:, :, :, 4:] = 1.0  # left half black, right half white
    small = resize_images(x, 4)
    assert small.shape == (2, 1, 4, 4)
    assert torch.equal(small * 255, (small * 255).round())  # 8-bit levels
    row = small[0, 0, 0].tolist()  # the edge blurred by the filter, not aliased away
    assert row[0] == 0.0 and row[-1] == 1.0 and row == sorted(row)
    assert row[1] + row[2] == pytest.approx(1.0, abs=1 / 255)
    assert resize_images(x, 8) is x


def test_transfer_study_at_the_partners_resolution(tmp_path: Path,
                                                   surrogates: dict[str, Path]) -> None:
    """Images stored (and protected) at 56x56, victims trained at 28x28 on the training images
    resized there, and scoring what they are given after the same resize: a partner that
    trains at a lower resolution than the release. The figures are computed as usual; the
    clean victim scores on the stored images equal those on the images resized first."""
    from dicom_gateway.lab.datasets import resize_images
    from dicom_gateway.lab.evaluation.scoring import retained_skill
    from dicom_gateway.lab.evaluation.transfer import TransferStudy, run_transfer, set_up

    medmnist_npz("pneumoniamnist_balanced.npz")
    study = TransferStudy(dataset="pneumoniamnist", out=tmp_path / "report",
                          surrogate_files=(surrogates["pneumonia"],), victims=("plain-cnn",),
                          budgets=(8 / 255,), options={"steps": 3}, epochs=1, test_images=40,
                          size=56, victim_size=28, victim_recipe="light", progress=False,
                          cache=tmp_path / "cache")
    setup = set_up(study)
    assert setup.test.images.shape[2:] == (56, 56)
    victim = setup.black["plain-cnn"]
    with torch.no_grad():
        stored = victim(setup.test.images).argmax(1)
        first_resized = victim.model(resize_images(setup.test.images, 28)).argmax(1)
    assert torch.equal(stored, first_resized)
    results = run_transfer(study)
    assert results["dataset"]["resolution"] == [56, 56] and results["victim_size"] == 28
    assert "resized to 56x56" in results["dataset"]["source"]
    row = results["frontier"][0]
    assert row["max_abs_change_255"] <= 8
    acc = row["protected"]["accuracy"]["plain-cnn"]
    assert row["protected"]["black_box_retained_skill"] == pytest.approx(
        retained_skill(acc, results["clean"]["test_accuracy"]["plain-cnn"], results["chance"]),
        abs=1e-3)
    assert "at the partner's resolution 28x28" in (tmp_path / "report" / "report.md").read_text()


def test_train_surrogate_fine_tunes_slightly_robust(tmp_path: Path,
                                                     surrogates: dict[str, Path]) -> None:
    """``--init`` starts from a surrogate file; ``--adversarial-epsilon`` trains on FGSM
    examples; both are recorded in the file, and a mismatched ``--init`` is refused."""
    import subprocess
    import sys

    from dicom_gateway.protect.surrogate import load_surrogate

    data = medmnist_npz("pneumoniamnist_balanced.npz")
    out = tmp_path / "robust.pt"
    done = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "train-surrogate",
                           "--data", str(data), "--epochs", "1", "--init",
                           str(surrogates["pneumonia"]), "--adversarial-epsilon", "1/255",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    info = load_surrogate(out).info
    start = load_surrogate(surrogates["pneumonia"])
    assert info.training["adversarial_epsilon"] == pytest.approx(1 / 255, abs=1e-6)
    assert info.training["init"] == start.sha256 and info.view == "window-else-stored-range"
    assert info.metrics["val_accuracy"] > 0.8
    bad = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "train-surrogate",
                          "--data", str(data), "--epochs", "1", "--arch", "resnet18", "--init",
                          str(surrogates["pneumonia"]), "--out", str(tmp_path / "bad.pt")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--init" in bad.stderr and "cnn-small" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_an_ablation_lever_needs_a_label_and_options(tmp_path: Path, surrogates: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_gateway.cli import main

    args = ["evaluate", "--dataset", "pneumoniamnist", "--surrogate-files",
            str(surrogates["pneumonia"]), "--out", str(tmp_path / "out"), "--ablation-lever"]
    assert main([*args, "smoothing=15"]) == 1
    assert "--ablation-lever 'smoothing=15': expected LABEL:key=value" in capsys.readouterr().err
    assert main([*args, "TI:smoothing"]) == 1
    assert "expected key=value, got 'smoothing'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_victim_families() -> None:
    """The 224x224 victims are of distinct families, and a victim shares its family with the
    surrogate architectures of that family (then it is not held out)."""
    from dicom_gateway.lab.evaluation.victims import family

    panel = ["shufflenetv2-x0.5", "mobilenetv3-small-224", "regnetx-400mf", "densenet-small",
             "convnext-small", "vit-small", "efficientnet-b0-224", "squeezenet-224"]
    assert len({family(v) for v in panel}) == len(panel)
    assert family("convnext-small") == family("convnext-nano")
    assert family("vit-small") == family("vit-tiny")
    assert family("resnet10") != family("densenet-small")
    assert family("plain-cnn") == "plain-cnn"  # unknown: its own family


def test_ablation_ensembles_of_the_same_file_names_are_told_apart() -> None:
    """Ensembles whose files have the same names in other folders (the same recipe trained with
    another setting) are named by folder and stem in the ablation; others by stem alone."""
    from dicom_gateway.lab.evaluation.transfer import ensemble_labels

    a = [Path("e1/m-1.pt"), Path("e1/m-2.pt")]
    b = [Path("e2/m-1.pt"), Path("e2/m-2.pt")]
    c = [Path("e1/other.pt")]
    assert ensemble_labels([a, b, c]) == ["ensemble e1/m-1 + e1/m-2", "ensemble e2/m-1 + e2/m-2",
                                          "ensemble other"]
    assert ensemble_labels([a, c]) == ["ensemble m-1 + m-2", "ensemble other"]


def test_third_thumbnail_panel_is_held_out_from_the_first_two() -> None:
    """The third thumbnail panel (a check of the thumbnail defaults on architectures they were
    not chosen with) shares no family with the first two panels nor with the surrogates, and
    every one of its models takes 28x28 input and trains (one step, both modes)."""
    import torch

    from dicom_gateway.lab.evaluation.victims import ARCHITECTURES, family

    first = ["mobilenetv3-small", "shufflenetv2", "densenet121", "efficientnet-b0", "vit-tiny",
             "plain-cnn", "cnn-small"]
    third = ["resnet18", "regnetx-400mf-64", "squeezenet-64", "convnext-small-64", "mnasnet-64",
             "googlenet-64"]
    assert len({family(v) for v in third}) == len(third)
    assert not {family(v) for v in third} & {family(v) for v in first}
    for name in third[1:]:
        a = ARCHITECTURES[name]
        assert a.size == 64
        model = a.make(3, 2).train()
        out = model(torch.rand(2, 3, 64, 64))
        assert out.shape == (2, 2)
        out.sum().backward()
        assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 2)


def test_training_restores_the_best_epoch_of_a_versioned_torchvision_model() -> None:
    """``fit`` keeps the best epoch's weights with the state dict's module versions: MNASNet
    refuses a state dict without them (it stopped the third panel's first run)."""
    import torch

    from dicom_gateway.lab.datasets import ImageSet
    from dicom_gateway.lab.evaluation.victims import build
    from dicom_gateway.lab.train import fit

    torch.manual_seed(0)
    data = ImageSet(torch.rand(8, 1, 28, 28), torch.tensor([0, 1] * 4), classes=("a", "b"))
    model = build("mnasnet-64", data)
    assert 0.0 <= fit(model, data, 2, val=data, progress=False) <= 1.0


def test_snapshots_per_step_draws_from_each_snapshot_set() -> None:
    """``snapshots_per_step``: every surrogate that is no snapshot joins every step; of each
    set of snapshots (one ``train-surrogate --snapshots`` run, the same recorded start) the
    given number is drawn per step, and the draw is seeded."""
    from dicom_gateway.protect.perturbation import _drawn, attack, snapshot_sets
    from dicom_gateway.protect.surrogate import Surrogate, SurrogateInfo, build_model

    def made(start: str | None) -> Surrogate:
        info = SurrogateInfo(arch="cnn-small", task="classification", input_size=(16, 16),
                             channels=1, classes=("a", "b"), mean=(0.5,), std=(0.25,),
                             training={"lgv": {"init": start}} if start else {})
        return Surrogate(build_model(info).eval(), info, start or "plain")

    ensemble = [made(None), made("a" * 64), made("a" * 64), made("a" * 64), made(None),
                made("b" * 64), made("b" * 64)]
    assert snapshot_sets(ensemble) == [[1, 2, 3], [5, 6]]
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        step = _drawn(ensemble, snapshot_sets(ensemble), 1, g)
        indices = [next(i for i, s in enumerate(ensemble) if s is m) for m in step]
        assert indices[0] == 0 and 4 in indices and len(indices) == 4
        assert len(set(indices) & {1, 2, 3}) == 1 and len(set(indices) & {5, 6}) == 1
        seen.update(indices)
    assert seen == set(range(7))  # every snapshot gets its turns
    assert _drawn(ensemble, [], 1, g) == ensemble  # no snapshots: all, every step
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    first = attack(x, ensemble, epsilon=4 / 255, steps=3, snapshots_per_step=1)
    assert torch.equal(first, attack(x, ensemble, epsilon=4 / 255, steps=3,
                                     snapshots_per_step=1))
    assert float((first - x).abs().max()) <= 4 / 255 + 1e-6

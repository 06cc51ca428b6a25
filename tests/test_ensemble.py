"""``train-surrogate --ensemble``: the recommended ensemble in one command, resumable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicom_gateway.lab.ensemble import at_sizes, recipe


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


def _write_manifest(folder: Path, recipe: list[str], listed: list[str]) -> None:
    """The ``ensemble.json`` ``train-surrogate --ensemble`` would write for the members
    ``listed`` (one file ``NAME.pt`` each, in ``folder``) of ``recipe``."""
    from dicom_gateway.protect import ensemble_folder
    from dicom_gateway.protect.surrogate import load_surrogate

    members = {n: {"member": {}, "files": [f"{n}.pt"],
                   "sha256": {f"{n}.pt": load_surrogate(folder / f"{n}.pt").sha256}}
               for n in listed}
    body = {"settings": {}, "recipe": recipe, "members": members}
    (folder / ensemble_folder.MANIFEST).write_text(json.dumps(body))


_PROFILE = """\
gateway: {{ae_title: GW, listen: {{host: 127.0.0.1, port: 11112}}, spool_dir: spool,
          allowed_callers: [PACS]}}
profiles:
  xray: {{method: adversarial_perturbation, surrogates: [{folder}]}}
"""


def test_the_recipe_follows_the_image_size() -> None:
    """Thumbnails get six independently trained small CNNs; 224x224 the four families of the
    evaluation plus LGV snapshots; the ViT, which takes 224x224 only, is left out at other
    sizes."""
    assert [m.name for m in recipe(28, 28)] == [
        "cnn-small-affine-1", "cnn-small-affine-2", "cnn-small-affine-3", "cnn-small-affine-4",
        "cnn-small-light-1", "cnn-small-light-2"]
    assert len({m.seed for m in recipe(28, 28) if m.augment == "affine"}) == 4
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
    assert len(files) == 6 and f"surrogates: [{out}]" in done.stdout
    assert manifest["recipe"] == [m.name for m in recipe(20, 20)]
    loaded = {f: load_surrogate(out / f) for f in files}
    training = [(s.info.arch, s.info.training["augment"], s.info.training["seed"])
                for s in loaded.values()]
    assert training == [*(("cnn-small", "affine", k) for k in range(4)),
                        *(("cnn-small", "light", k) for k in range(2))]
    assert all(s.info.training["adversarial_epsilon"] > 0 for s in loaded.values())
    assert len({s.sha256 for s in loaded.values()}) == 6  # six different networks
    # one size: the members are listed as before --sizes existed, so older folders are kept
    assert all("train_size" not in m["member"] for m in manifest["members"].values())

    again = _cli(*args)  # nothing to do: every member kept, no file touched
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("(kept)") == 6 and "(trained)" not in again.stdout
    assert {f: load_surrogate(out / f).sha256 for f in files} == {
        f: s.sha256 for f, s in loaded.items()}

    (out / "cnn-small-light-2.pt").write_bytes(b"cut short")  # an interrupted member
    profile = tmp_path / "gateway.yaml"
    profile.write_text(_PROFILE.format(folder=out))
    refused = _cli("check-config", str(profile))  # a profile naming the folder sees it
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "profiles.xray.surrogates" in refused.stderr
    assert "cnn-small-light-2.pt: changed since" in refused.stderr
    mended = _cli(*args)
    assert mended.returncode == 0, mended.stderr
    assert "cnn-small-light-2: 1 file(s)" in mended.stdout
    assert mended.stdout.count("(kept)") == 5 and mended.stdout.count("(trained)") == 1
    again_info = load_surrogate(out / "cnn-small-light-2.pt").info
    assert (again_info.training["augment"], again_info.training["seed"]) == ("light", 1)

    other = _cli(*args[:-4], "--epochs", "2", "--out", str(out))  # other settings, same folder
    assert other.returncode != 0 and "other settings" in other.stderr
    smaller = _cli(*args[:-2], "--size", "16", "--out", str(out))  # another training size
    assert smaller.returncode != 0 and "'size': [20, 20]" in smaller.stderr
    mixed = _cli(*args[:-2], "--arch", "resnet18", "--out", str(tmp_path / "x"))
    assert mixed.returncode != 0 and "--arch" in mixed.stderr
    assert _cli("check-config", str(profile)).returncode == 0
    for refused in (other, smaller, mixed):
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_sizes_train_the_recipe_at_the_smallest_and_two_cnns_at_each_other(
        tmp_path: Path) -> None:
    """``--ensemble --sizes``: decision 0038's set in one command (the thumbnail recipe at the
    smallest size, two small CNNs at each further size), each surrogate declaring the size it
    was trained at; a rerun keeps it; misuse is one line naming the flag."""
    from dicom_gateway.protect.ensemble_folder import ensemble_files
    from dicom_gateway.protect.surrogate import load_surrogate

    assert [(m.name, m.train_size) for m in at_sizes((64, 28))] == [
        *((m.name, 28) for m in recipe(28, 28)),
        ("cnn-small-64-1", 64), ("cnn-small-64-2", 64)]
    _classes(tmp_path / "cls")
    out = tmp_path / "models"
    args = ("train-surrogate", "--data", str(tmp_path / "cls"), "--ensemble", "--epochs", "1",
            "--sizes", "12,16", "--out", str(out))
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    assert "8 members, 8 surrogate files" in done.stdout
    sizes = [load_surrogate(f).info.input_size for f in ensemble_files(out)]
    assert sizes == [(12, 12)] * 6 + [(16, 16)] * 2
    manifest = json.loads((out / "ensemble.json").read_text())
    assert manifest["settings"]["sizes"] == [12, 16]
    again = _cli(*args)
    assert again.returncode == 0 and again.stdout.count("(kept)") == 8, again.stderr

    for bad, says in ((("--sizes", "12"), "two or more"), (("--sizes", "12,x"), "in pixels"),
                      (("--sizes", "12,16", "--size", "20"), "not both")):
        refused = _cli(*args[:-4], *bad, "--out", str(tmp_path / "y"))
        assert refused.returncode != 0 and says in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    alone = _cli("train-surrogate", "--data", str(tmp_path / "cls"), "--sizes", "12,16",
                 "--out", str(tmp_path / "z.pt"))
    assert alone.returncode != 0 and "only with --ensemble" in alone.stderr


def test_a_profile_names_the_folder_when_every_member_is_there(tmp_path: Path) -> None:
    """``surrogates: [DIR]`` stands for the files of ``DIR/ensemble.json`` in its order; an
    unfinished ensemble, a missing file, a folder without a manifest are refused, saying what
    to do (the recipe's members are named in the manifest from the first member on)."""
    from dicom_gateway.lab.train import train_surrogate
    from dicom_gateway.protect import ensemble_folder
    from dicom_gateway.protect.options import PerturbationOptions

    _classes(tmp_path / "cls")
    out = tmp_path / "models"
    out.mkdir()
    names = ["b", "a"]
    for name in names:
        train_surrogate(tmp_path / "cls", "cnn-small", out / f"{name}.pt", epochs=1,
                        progress=False)
    _write_manifest(out, names, names)
    options = PerturbationOptions.parse({"surrogates": ["models"]}, base_dir=tmp_path)
    assert options.surrogates == (out / "b.pt", out / "a.pt")
    _write_manifest(out, [*names, "c"], names)
    refused = ensemble_folder.EnsembleFolderError
    with pytest.raises(refused, match=r"unfinished \(2 of 3 members trained; missing: c\): rerun"):
        ensemble_folder.ensemble_files(out)
    _write_manifest(out, names, names)
    (out / "a.pt").unlink()
    with pytest.raises(refused, match=r"a\.pt: listed in ensemble\.json but missing"):
        ensemble_folder.ensemble_files(out)
    (out / ensemble_folder.MANIFEST).unlink()
    with pytest.raises(refused, match=r"needs the ensemble\.json"):
        ensemble_folder.ensemble_files(out)


def test_a_member_started_from_another_is_retrained_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe with a fine-tuned member (as at 224x224): when the member it starts from is
    retrained, the fine-tune is retrained too; an untouched independent member is kept; a
    member a later recipe no longer names is dropped from the manifest."""
    from dicom_gateway.lab import ensemble
    from dicom_gateway.lab.ensemble import Member, train_ensemble

    members = (Member("base", "cnn-small", 0.0), Member("tuned", "cnn-small", 1 / 255,
                                                        init="base", epochs=1),
               Member("other", "cnn-small", 0.0, seed=1))
    monkeypatch.setattr(ensemble, "recipe", lambda height, width: members)
    _classes(tmp_path / "cls")
    out = tmp_path / "models"
    first = train_ensemble(tmp_path / "cls", out, epochs=1, progress=False)
    assert first.trained == ["base", "tuned", "other"]
    (out / "base.pt").write_bytes(b"cut short")
    again = train_ensemble(tmp_path / "cls", out, epochs=1, progress=False)
    assert again.trained == ["base", "tuned"]
    manifest = json.loads((out / "ensemble.json").read_text())
    assert set(manifest["members"]) == {"base", "tuned", "other"}

    # a later version's recipe without "other": the manifest and the profile line drop it
    monkeypatch.setattr(ensemble, "recipe", lambda height, width: members[:2])
    upgraded = train_ensemble(tmp_path / "cls", out, epochs=1, progress=False)
    assert upgraded.trained == [] and set(upgraded.members) == {"base", "tuned"}
    assert out / "other.pt" not in upgraded.files(out)
    assert set(json.loads((out / "ensemble.json").read_text())["members"]) == {"base", "tuned"}


def test_a_profile_lists_the_folder_beside_surrogates_at_another_size(tmp_path: Path) -> None:
    """Decision 0038: surrogates trained at the partner's resolution (``--size``) listed beside
    the ensemble folder; the folder expands in its manifest's order, the files follow, each
    surrogate keeps its declared size, and the attack runs on the stored image with both, the
    budget kept at the stored pixels."""
    import torch

    from dicom_gateway.lab.train import train_surrogate
    from dicom_gateway.protect.options import PerturbationOptions
    from dicom_gateway.protect.perturbation import attack
    from dicom_gateway.protect.surrogate import load_surrogate

    _classes(tmp_path / "cls")
    (tmp_path / "models").mkdir()
    (tmp_path / "small").mkdir()
    stored = tmp_path / "models" / "a.pt"
    reduced = tmp_path / "small" / "c.pt"
    train_surrogate(tmp_path / "cls", "cnn-small", stored, epochs=1, progress=False)
    train_surrogate(tmp_path / "cls", "cnn-small", reduced, epochs=1, progress=False, size=12)
    _write_manifest(tmp_path / "models", ["a"], ["a"])
    options = PerturbationOptions.parse({"surrogates": ["models", "small/c.pt"]},
                                        base_dir=tmp_path)
    assert options.surrogates == (stored, reduced)
    loaded = [load_surrogate(p) for p in options.surrogates]
    assert [s.info.input_size for s in loaded] == [(20, 20), (12, 12)]
    x = torch.rand(4, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    adv = attack(x, loaded, 8 / 255, steps=3, transform="augment")
    assert adv.shape == x.shape
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float((adv - x).abs().max()) > 4 / 255  # the stored pixels moved, within budget

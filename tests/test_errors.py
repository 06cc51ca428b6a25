"""One error tree: every failure on purpose is a GatewayError with a message for the user, and
the command line prints it (or an OSError) as one line; only a bug says "internal error"."""

from __future__ import annotations

import inspect
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from gwutil import base_config, partner, with_seal

from dicom_gateway import errors
from dicom_gateway.cli import main

SURROGATE = str(files("dicom_gateway").joinpath("defaults", "pneumonia-cnn-small.pt"))


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "internal error" not in err, err
    return err


def _protecting_config(tmp_path: Path, surrogate: str = SURROGATE, **protection: Any) -> Path:
    raw = base_config(tmp_path / "spool", [partner("uni-x", 11112)], [
        {"name": "all", "match": {}, "to": ["uni-x"], "profile": "protected"}])
    raw["profiles"]["protected"] = {"method": "adversarial_perturbation",
                                    "surrogates": [surrogate]}
    raw["protection"] = protection
    with_seal(raw, tmp_path / "keys")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_error_class_is_in_the_tree() -> None:
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if obj.__module__ == errors.__name__]
    assert {c.__name__ for c in classes} == set(errors.__all__)
    assert all(issubclass(c, errors.GatewayError) for c in classes)
    for name in errors.__all__:  # the module docstring draws every class
        assert name in (errors.__doc__ or ""), name
    from dicom_gateway import pixels, seal
    from dicom_gateway.seal import keys

    assert pixels.PixelError is errors.PixelError and seal.SealError is errors.SealError
    assert not hasattr(keys, "KeyError_")


def test_missing_cuda_is_one_line_naming_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = _protecting_config(tmp_path, device="cuda")
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        assert main(command) == 2
        err = _one_line(capsys)
        assert f"{config}: protection.device: cuda, but torch sees no CUDA device" in err
    assert not any((tmp_path / "spool" / "tmp").iterdir())  # stopped before the spool's pool


def test_a_corrupt_surrogate_is_named_at_check_config(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x80\x04not a torch file at all")
    config = _protecting_config(tmp_path, str(bad))
    assert main(["check-config", str(config)]) == 2
    err = _one_line(capsys)
    assert f"profiles.protected.surrogates: {bad}: not a usable surrogate file" in err


def test_a_corrupt_surrogate_is_named_by_protect_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"")
    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(data, train_images=rng.integers(0, 255, (4, 8, 8), dtype=np.uint8),
             train_labels=np.array([[0], [1], [0], [1]]))
    assert main(["protect-dataset", "--data", str(data), "--surrogate", str(bad),
                 "--out", str(tmp_path / "out")]) == 1
    assert f"{bad}: not a usable surrogate file" in _one_line(capsys)


def test_unusable_training_data_is_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "nosplit.npz"
    np.savez(data, images=np.zeros((2, 8, 8), dtype=np.uint8))
    assert main(["train-surrogate", "--data", str(data), "--out", str(tmp_path / "s.pt")]) == 1
    assert f"{data}: cannot train on it: " in _one_line(capsys)


def test_an_os_error_is_one_line_and_a_bug_is_an_internal_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["keys", "init", "--out", str(blocker / "keys")]) == 1
    assert str(blocker) in _one_line(capsys)

    def bug(args: Any) -> int:
        raise ValueError("a bug, not a domain failure")

    monkeypatch.setattr("dicom_gateway.cli._cmd_check_config", bug)
    assert main(["check-config", "x.yaml"]) == 1
    assert "internal error: ValueError: a bug" in capsys.readouterr().err

"""An interrupted ``protect-dataset`` resumes after its last whole round and writes the same
release as an uninterrupted run (issue 14, deliverable 3); another job's checkpoint in the
folder is not resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicom_gateway.lab.dataset_job import DatasetJob, protect_dataset
from dicom_gateway.lab.round_checkpoint import CHECKPOINT, RoundCheckpoint
from dicom_gateway.protect.unlearnable import RoundState


def _data(tmp_path: Path) -> Path:
    """A MedMNIST-layout set whose two classes differ in brightness (something to learn)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (48, 1))
    images = (rng.integers(0, 120, (48, 28, 28)) + 100 * labels[:, :, None]).astype(np.uint8)
    path = tmp_path / "set.npz"
    np.savez(path, train_images=images, train_labels=labels)
    return path


def _job(data: Path, out: Path, **settings: object) -> DatasetJob:
    return DatasetJob(data=data, out=out, rounds=4, train_steps=2, pgd_steps=2,
                      **settings)  # type: ignore[arg-type]


def _release(out: Path) -> np.ndarray:
    with np.load(out / "set.npz") as release:
        return np.asarray(release["train_images"])


class _Killed(BaseException):
    """Stands for the process dying right after a checkpoint was made durable."""


def _interrupted_after(round_: int, job: DatasetJob, monkeypatch: pytest.MonkeyPatch) -> None:
    save = RoundCheckpoint.save

    def save_then_die(self: RoundCheckpoint, state: RoundState) -> None:
        save(self, state)
        if state.done == round_:
            raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(RoundCheckpoint, "save", save_then_die)
        with pytest.raises(_Killed):
            protect_dataset(job, progress=False)


def test_a_rerun_resumes_after_the_last_round_and_writes_the_same_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path)
    whole = protect_dataset(_job(data, tmp_path / "whole"), progress=False)
    assert whole["rounds"] == 4 and whole["resumed_after_round"] is None
    assert not (tmp_path / "whole" / CHECKPOINT).exists()  # removed once the release is written

    job = _job(data, tmp_path / "resumed")
    _interrupted_after(2, job, monkeypatch)
    assert (tmp_path / "resumed" / CHECKPOINT).exists()
    assert not (tmp_path / "resumed" / "set.npz").exists()
    report = protect_dataset(job, progress=False)
    assert report["resumed_after_round"] == 2 and report["rounds"] == 4
    assert np.array_equal(_release(tmp_path / "resumed"), _release(tmp_path / "whole"))
    assert report["surrogate_final_loss"] == whole["surrogate_final_loss"]
    assert not (tmp_path / "resumed" / CHECKPOINT).exists()
    saved = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert saved["resumed_after_round"] == 2


def test_another_jobs_checkpoint_is_not_resumed(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path)
    _interrupted_after(2, _job(data, tmp_path / "out", epsilon=4 / 255), monkeypatch)
    report = protect_dataset(_job(data, tmp_path / "out"), progress=False)  # 8/255 now
    assert report["resumed_after_round"] is None and report["rounds"] == 4
    fresh = protect_dataset(_job(data, tmp_path / "fresh"), progress=False)
    assert np.array_equal(_release(tmp_path / "out"), _release(tmp_path / "fresh"))
    assert report["max_abs_change"] == fresh["max_abs_change"] > 4 / 255


def test_a_damaged_checkpoint_costs_the_rounds_not_the_job(tmp_path: Path) -> None:
    data = _data(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / CHECKPOINT).write_bytes(b"not a checkpoint")
    report = protect_dataset(_job(data, tmp_path / "out"), progress=False)
    assert report["resumed_after_round"] is None and report["rounds"] == 4
    assert not (tmp_path / "out" / CHECKPOINT).exists()

"""Fixtures wrapping the real-peer helpers of :mod:`peers`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import OrthancPeer, RecordingSCP, build_multiseries_study, copy_ct_series, medmnist_npz


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPeer]:
    """A running Orthanc (skips outside a private network namespace)."""
    with OrthancPeer(tmp_path / "orthanc") as peer:
        yield peer


@pytest.fixture
def recording_scp() -> Iterator[RecordingSCP]:
    """A running in-process Storage SCP on 127.0.0.1 that records what it receives."""
    with RecordingSCP() as scp:
        yield scp


@pytest.fixture
def ct_series_dir(tmp_path: Path) -> Path:
    """Directory with a copy of the real 18-slice CT series (skips if data is absent)."""
    copy_ct_series(tmp_path / "ct")
    return tmp_path / "ct"


@pytest.fixture
def multiseries_study_dir(tmp_path: Path) -> Path:
    """Directory with a 9-series study in mixed transfer syntaxes."""
    build_multiseries_study(tmp_path / "multiseries")
    return tmp_path / "multiseries"


@pytest.fixture(scope="session")
def surrogates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cnn-small surrogates trained by ``dicom-gateway train-surrogate`` (once per session)."""
    out = tmp_path_factory.mktemp("surrogates")
    made = {}
    for key, name in (("retina", "retinamnist.npz"), ("pneumonia", "pneumoniamnist_balanced.npz")):
        target = out / f"{key}-cnn-small.pt"
        done = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "train-surrogate",
                               "--data", str(medmnist_npz(name)), "--arch", "cnn-small",
                               "--epochs", "8", "--adversarial-epsilon", "0",  # standard models:
                               # the white-box tests measure the attack on an ordinary classifier
                               "--out", str(target)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "val accuracy" in done.stdout and "sha256" in done.stdout
        made[key] = target
    return made


@pytest.fixture(scope="session")
def lung_segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A unet-small segmenter trained briefly by ``train-surrogate`` on the MSD lung patches."""
    from peers import msd_lung_h5

    target = tmp_path_factory.mktemp("segmenter") / "lung-unet-small.pt"
    done = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "train-surrogate",
                           "--data", str(msd_lung_h5("val")), "--task", "segmentation",
                           "--epochs", "3", "--out", str(target)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unet-small 48x48x1" in done.stdout and "val dice" in done.stdout
    return target

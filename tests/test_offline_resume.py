"""``dicom-gateway protect`` writes each instance as it is done and resumes after an
interruption: a SIGKILL mid-run keeps every finished instance, the rerun protects only the
rest, and a rerun with other settings into the same folder is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from gwutil import base_config, partner, uid_secret, with_seal

torch = pytest.importorskip("torch")

from dicom_gateway.lab.evaluation.gateway_path import wrap_as_dicom  # noqa: E402
from dicom_gateway.lab.offline import JOURNAL  # noqa: E402
from dicom_gateway.protect.surrogate import SurrogateInfo, build_model, save_surrogate  # noqa: E402
from dicom_gateway.seal.uids import derive_uid  # noqa: E402

N = 200


def _protect(cfg: Path, inputs: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dicom_gateway.cli", "protect", "--config",
                             str(cfg), "--profile", "protected", "--partner", "acme",
                             str(inputs), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _config(tmp_path: Path, epsilon: float) -> Path:
    info = SurrogateInfo(arch="cnn-small", task="classification", input_size=(32, 32),
                         channels=1, classes=("a", "b"), mean=(0.5,), std=(0.25,))
    torch.manual_seed(0)
    surrogate = tmp_path / "s.pt"
    if not surrogate.exists():
        save_surrogate(build_model(info), info, surrogate)
    raw = with_seal(base_config(tmp_path / "spool", [partner("acme", 11112)], []),
                    tmp_path / "keys")
    # 20 steps on 4 images at a time: slow enough to be stopped halfway
    raw["profiles"]["protected"] = {"method": "adversarial_perturbation", "epsilon": epsilon,
                                    "steps": 20, "batch": 4, "surrogates": [str(surrogate)]}
    cfg = tmp_path / f"gw-{epsilon:.4f}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _entries(out: Path) -> list[tuple[str, str]]:
    lines = (out / JOURNAL).read_text().splitlines()
    return [tuple(line.split(" ")) for line in lines[1:] if line]  # type: ignore[misc]


def test_an_interrupted_protect_keeps_what_it_finished_and_the_rerun_does_the_rest(
        tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    sources = wrap_as_dicom(torch.rand(N, 1, 32, 32, generator=gen), tmp_path / "in")
    cfg, out = _config(tmp_path, 4 / 255), tmp_path / "out"

    first = _protect(cfg, tmp_path / "in", out)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if (out / JOURNAL).is_file() and len(_entries(out)) >= 40:
            break
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before it could be interrupted"
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    done = _entries(out)
    assert 40 <= len(done) < N
    kept = {}
    for _, name in done:  # every instance the journal lists is complete on disk
        path = out / name
        assert pydicom.dcmread(path).pixel_array.shape == (32, 32)
        kept[name] = (path.stat().st_ino, path.stat().st_mtime_ns)
    assert {p.name for p in out.glob("*.dcm")} == set(kept)  # nothing half-written as .dcm

    rerun = _protect(cfg, tmp_path / "in", out)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert f"{N - len(done)} instance(s) protected" in stdout
    assert f"{len(done)} already there from an earlier run" in stdout
    for name, (inode, mtime) in kept.items():  # the finished ones were not redone
        stat = (out / name).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == (inode, mtime)
    entries = _entries(out)
    secret = uid_secret(tmp_path / "keys")
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sources}
    assert len(entries) == N and {uid for uid, _ in entries} == expected
    assert {name for _, name in entries} == {f"{derive_uid(secret, 'acme', uid)}.dcm"
                                            for uid in expected}
    assert len(list(out.glob("*.dcm"))) == N and not list(out.glob("*.partial"))

    other = _protect(_config(tmp_path, 8 / 255), tmp_path / "in", out)
    stdout, stderr = other.communicate(timeout=300)
    assert other.returncode != 0 and "another protect run" in stderr
    assert "Traceback" not in stderr

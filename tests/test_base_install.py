"""The base install (no ``protect`` extra) is enough for what never protects pixels.

A partner runs ``keys``, ``verify`` and ``restore``; a hospital checks a configuration and
serves ``none`` profiles. None of that may execute ``import torch``. The commands run here in
subprocesses whose ``sitecustomize`` puts a finder in front of ``sys.meta_path`` that logs and
refuses every import of torch, torchvision and h5py (what the ``protect`` extra brings), so
the full test venv behaves, for these packages, like a base install, and the log shows any
attempt. A profile that needs torch is then refused at ``check-config`` with one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml
from gwutil import GatewayProcess, base_config, partner, sample, send
from peers import RecordingSCP
from pydicom.data import get_testdata_file
from test_seal import _protect

from dicom_gateway.pixels import pixel_digest, read_pixels
from dicom_gateway.seal import load_partner_key, seal
from dicom_gateway.seal.keys import load_gateway_keys

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("torch", "torchvision", "h5py")

BLOCKER = f'''
import os, sys

class _ProtectExtraAbsent:
    """Log and refuse imports of the protect extra's packages, as if not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {EXTRA!r}:
            with open(os.environ["DICOM_GATEWAY_TEST_IMPORT_LOG"], "a") as log:
                log.write(f"{{os.getpid()}} {{name}}\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _ProtectExtraAbsent())
'''


@pytest.fixture
def base_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Blocks the extra in this test's subprocesses (their children too); returns the log."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "extra-imports.log"
    log.touch()
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("DICOM_GATEWAY_TEST_IMPORT_LOG", str(log))
    return log


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_gateway.cli", *args],
                          capture_output=True, text=True, timeout=120)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_blocker_refuses_torch(base_env: Path) -> None:
    """The check below would prove nothing if the blocker let torch through."""
    done = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True)
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in done.stderr
    assert base_env.read_text().split()[-1] == "torch"


def test_partner_and_config_commands_never_import_torch(base_env: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert "key id" in _ok(_cli("keys", "init", "--out", str(keys / "gateway")))
    assert "key id" in _ok(_cli("keys", "partner", "--name", "acme", "--out",
                                str(keys / "partners")))
    example = ROOT / "config" / "gateway.example.yaml"  # `none` profiles only
    assert " OK: " in _ok(_cli("check-config", str(example)))

    # sealed instances as the gateway sends them (pixels changed by a stand-in method)
    gateway = load_gateway_keys(keys / "gateway" / "gateway-signing.key",
                                keys / "gateway" / "uid-secret.key")
    partner_key = load_partner_key(keys / "partners" / "acme.key")
    received = tmp_path / "received"
    received.mkdir()
    digests = {}
    for name in ("CT_small.dcm", "MR_small.dcm"):
        original = pydicom.dcmread(get_testdata_file(name))
        protected, residual = _protect(original)
        sealed = seal(original, protected, residual, "test", {}, gateway, "GW", partner_key)
        sealed.save_as(received / name, enforce_file_format=True)
        digests[str(original.SOPInstanceUID)] = pixel_digest(read_pixels(original).values)

    public = str(keys / "gateway" / "gateway-signing.pub")
    out = _ok(_cli("verify", "--gateway-key", public, str(received)))
    assert out.count(": VALID issuer GW") == 2
    out = _ok(_cli("restore", "--key", str(keys / "partners" / "acme.key"), "--gateway-key",
                   public, str(received), "--out", str(tmp_path / "originals")))
    assert out.startswith("restore: 2 instance(s): 2 restored")
    for uid, digest in digests.items():
        back = pydicom.dcmread(tmp_path / "originals" / f"{uid}.dcm")
        assert pixel_digest(read_pixels(back).values) == digest
    assert base_env.read_text() == ""


def test_serve_with_none_profiles_never_imports_torch(base_env: Path, tmp_path: Path) -> None:
    with RecordingSCP() as scp:
        raw = base_config(tmp_path / "spool", [partner("uni-x", scp.port)],
                          [{"name": "all", "match": {}, "to": ["uni-x"],
                            "profile": "passthrough"}])
        with GatewayProcess(raw, tmp_path) as gw:  # forwarder processes inherit the blocker
            assert send(gw.port, [sample()]) == [0]
            assert scp.wait_for_count(1, timeout=30) == 1
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_tail()
    assert base_env.read_text() == ""


def test_a_profile_that_needs_torch_is_refused_in_one_line(base_env: Path,
                                                             tmp_path: Path) -> None:
    raw = base_config(tmp_path / "spool", [], [])
    raw["profiles"]["xray-invisible"] = {"method": "adversarial_perturbation",
                                         "surrogates": ["model.pt"]}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = _cli("check-config", str(config))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"dicom-gateway: configuration error: {config}: profiles.xray-invisible.method: method "
        "'adversarial_perturbation' needs torch, which this install lacks: "
        "pip install 'dicom-gateway[protect]'"]


def test_evaluate_without_the_extra_says_what_to_install(base_env: Path, tmp_path: Path) -> None:
    done = _cli("evaluate", "--dataset", "retinamnist", "--out", str(tmp_path / "eval"))
    assert done.returncode == 1 and done.stderr.splitlines() == [
        "dicom-gateway: evaluate needs torch, which this install lacks: "
        "pip install 'dicom-gateway[protect,eval]'"]

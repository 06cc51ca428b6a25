"""The partner's ``verify`` and ``restore`` (issue 16, item 1): an input without a DICOM instance
is an error, every run ends with a one-line summary, and the exit status tells a script what
happened (0 all valid, 1 something invalid or nothing checked, 3 some instance not sealed)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from gwutil import sample_series

from dicom_gateway.cli import main
from dicom_gateway.pixels import Pixels, read_pixels, write_pixels
from dicom_gateway.seal import init_gateway_keys, load_gateway_keys, load_partner_key, seal
from dicom_gateway.seal.keys import new_partner_key


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``keys/``, ``good/`` (two sealed CT instances), ``tampered/`` (the same, one pixel changed
    in one), ``mixed/`` (one sealed, one as the hospital sent it) and ``empty/``."""
    root = tmp_path_factory.mktemp("partner")
    init_gateway_keys(root / "keys")
    new_partner_key("acme", root / "keys")
    gateway = load_gateway_keys(root / "keys" / "gateway-signing.key",
                                root / "keys" / "uid-secret.key")
    partner = load_partner_key(root / "keys" / "acme.pub")
    (root / "good").mkdir()
    originals = sample_series(root / "ct", 2)
    for i, path in enumerate(originals):
        original = pydicom.dcmread(path)
        px = read_pixels(original)
        protected = px.values.copy()
        protected[0, :8, :8] += 1  # a stand-in protection: a small known change
        residual = px.values.astype(np.int64) - protected
        sealed = seal(original, write_pixels(original, Pixels(protected, px.photometric,
                                                              px.bits_stored)),
                      residual, "test", {}, gateway, "GW", partner)
        sealed.save_as(root / "good" / f"{i}.dcm", enforce_file_format=True)
    shutil.copytree(root / "good", root / "tampered")
    ds = pydicom.dcmread(root / "tampered" / "1.dcm")
    arr = ds.pixel_array.copy()
    arr[100, 100] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(root / "tampered" / "1.dcm")
    (root / "mixed").mkdir()
    shutil.copy(root / "good" / "0.dcm", root / "mixed" / "0.dcm")
    shutil.copy(originals[1], root / "mixed" / "1.dcm")
    (root / "empty").mkdir()
    return root


def _verify(root: Path, folder: str) -> list[str]:
    return ["verify", "--gateway-key", str(root / "keys" / "gateway-signing.pub"),
            str(root / folder)]


def _restore(root: Path, folder: str, out: Path) -> list[str]:
    return ["restore", "--key", str(root / "keys" / "acme.key"), "--gateway-key",
            str(root / "keys" / "gateway-signing.pub"), str(root / folder), "--out", str(out)]


def _lines(text: str) -> list[str]:
    return text.strip().splitlines()


def test_an_empty_folder_is_an_error_not_success(folders: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_verify(folders, "empty")) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(_lines(err)) == 1
    assert "no DICOM instance: the folder is empty" in err
    assert main(_restore(folders, "empty", tmp_path / "out")) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(_lines(err)) == 1 and "the folder is empty" in err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_folder_without_dicom_files_says_what_it_holds(
        tmp_path: Path, folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("not an image\n")
    (tmp_path / "notes" / "thumbs.db").write_bytes(b"\0" * 200)
    args = ["verify", "--gateway-key", str(folders / "keys" / "gateway-signing.pub"),
            str(folders / "good"), str(tmp_path / "notes")]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out == ""  # nothing checked: the good folder is not half-verified
    assert len(_lines(err)) == 1
    assert "notes: no DICOM instance: the folder holds 2 file(s), none of them DICOM" in err


def test_a_good_folder_ends_with_the_summary_and_exit_0(folders: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert main(_verify(folders, "good")) == 0
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 3 and all(": VALID issuer GW" in line for line in lines[:2])
    assert lines[-1] == "verify: 2 instance(s): 2 valid, 0 invalid, 0 not sealed"
    assert main(_restore(folders, "good", tmp_path / "out")) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert re.fullmatch(re.escape("restore: 2 instance(s): 2 restored, 0 failed, 0 not sealed; "
                                  f"written to {tmp_path / 'out'}; signature checked with gateway "
                                  "key ") + r"[0-9a-f]{16}" + re.escape(
                                      ", pixels checked against the signed original digest"),
                        _lines(out)[-1])
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2


@pytest.mark.parametrize("folder, status, line, tally", [
    # a changed pixel: invalid, and the script must see a failure
    ("tampered", 1, "1.dcm: INVALID (pixels_altered)", (1, 1, 0)),
    # an instance as the hospital sent it: counted apart, with its own status
    ("mixed", 3, "1.dcm: NOT SEALED", (1, 0, 1)),
])
def test_each_instance_is_counted_and_the_status_tells_what_happened(
        folders: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], folder: str,
        status: int, line: str, tally: tuple[int, int, int]) -> None:
    good, bad, unsealed = tally
    assert main(_verify(folders, folder)) == status
    lines = _lines(capsys.readouterr().out)
    assert line in lines[1]
    assert lines[-1] == (f"verify: 2 instance(s): {good} valid, {bad} invalid, "
                         f"{unsealed} not sealed")
    assert main(_restore(folders, folder, tmp_path / "out")) == status
    out, err = capsys.readouterr()
    reason = "pixels_altered" if bad else "no_seal"
    assert f"1.dcm: not restored ({reason})" in err
    assert _lines(out)[-1].startswith(f"restore: 2 instance(s): {good} restored, {bad} failed, "
                                      f"{unsealed} not sealed")

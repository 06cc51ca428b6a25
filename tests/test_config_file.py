"""The configuration file itself: a repeated key, binary garbage and a directory given as a key
file each get a one-line answer naming the file and what is wrong (issue 15, item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dicom_gateway.cli import main
from dicom_gateway.seal.keys import init_gateway_keys

GATEWAY = ("gateway: {ae_title: GW, listen: {host: 127.0.0.1, port: 11112}, "
           "allowed_callers: [A], spool_dir: spool}\n"
           "profiles: {p: {method: none}}\n"
           "partners: [{name: x, ae_title: X, host: 127.0.0.1, port: 104}]\n")


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err
    return err


def test_a_key_given_twice_is_refused_not_last_wins(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY + "routes: [{name: r, match: {}, to: [x], profile: p}]\nroutes: []\n")
    err = _check(path, capsys)
    assert f"{path}: invalid YAML: line 5, column 1: key 'routes' given twice (lines 4 and 5)" \
        in err
    nested = tmp_path / "nested.yaml"
    twice = "profiles: {p: {method: none, method: adversarial_perturbation}}"
    nested.write_text(GATEWAY.replace("profiles: {p: {method: none}}", twice))
    assert "key 'method' given twice" in _check(nested, capsys)


def test_binary_garbage_is_refused_in_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"gateway: \x00\x01\xff\xfe garbage: [\n\n\x89PNG\r\n")
    assert f"{path}: not UTF-8 text: byte 0xff at line 1 (offset 11)" in _check(path, capsys)
    control = tmp_path / "control.yaml"
    control.write_bytes(b"gateway: \x00\x01 [\n")
    assert "invalid YAML: line 1: control character 0x00 not allowed (offset 9)" in _check(
        control, capsys)


def test_a_directory_given_as_a_key_file_is_named_as_such(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_gateway_keys(tmp_path / "keys")
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY + "routes: []\n" + yaml.safe_dump({"seal": {
        "signing_key": str(tmp_path / "keys"),
        "uid_secret": str(tmp_path / "keys" / "uid-secret.key")}}))
    assert f"seal.signing_key: {tmp_path / 'keys'}: is a directory, not a private key file" \
        in _check(path, capsys)

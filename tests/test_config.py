"""Configuration: the example loads; every error names file, key path and problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_gateway.cli import main
from dicom_gateway.config import load_config, parse_config
from dicom_gateway.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "gateway.example.yaml"


def _raw() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.gateway.ae_title
    assert config.routes and config.partners and "none" in config.profiles


def test_check_config_cli_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_notes_a_perturbation_against_one_surrogate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A profile that protects against one surrogate file is valid, and check-config says in
    one note per profile that an ensemble protects markedly better (decision 0035); two files
    (not the same file twice) silence it."""
    import shutil

    shipped = Path(__file__).resolve().parents[1] / "dicom_gateway" / "defaults"
    one = tmp_path / "one.pt"
    shutil.copy(shipped / "pneumonia-cnn-small.pt", one)
    shutil.copy(one, tmp_path / "two.pt")
    raw = _raw()
    raw["profiles"]["xray"] = {"method": "adversarial_perturbation",
                               "surrogates": [str(one), str(tmp_path / "." / "one.pt")]}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    notes = [line for line in out if ": note: " in line]
    assert len(notes) == 1, out
    assert notes[0].startswith(f"{path}: note: profile 'xray': adversarial_perturbation "
                               "against one surrogate")
    assert "train-surrogate --data DATA --ensemble" in notes[0]
    assert out[-1].startswith(f"{path}: OK")
    raw["profiles"]["xray"]["surrogates"] = [str(one), str(tmp_path / "two.pt")]
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-config", str(path)]) == 0
    assert ": note: " not in capsys.readouterr().out


@pytest.mark.parametrize("mutate, path, problem", [
    (lambda r: r["gateway"].update(colour="red"), "gateway.colour", "unknown key"),
    (lambda r: r["gateway"].pop("ae_title"), "gateway.ae_title", "required key is missing"),
    (lambda r: r["gateway"].update(ae_title="WAY_TOO_LONG_AE_TITLE"), "gateway.ae_title",
     "AE title"),
    (lambda r: r["gateway"].update(allowed_callers=[]), "gateway.allowed_callers", "at least one"),
    (lambda r: r["gateway"]["listen"].update(port=70000), "gateway.listen.port", "TCP port"),
    (lambda r: r["gateway"].update(study_stable_seconds="soon"), "gateway.study_stable_seconds",
     "expected float"),
    (lambda r: r["routes"][0].update(to=["nobody"]), "routes[0].to[0]", "unknown partner 'nobody'"),
    (lambda r: r["routes"][0].update(profile="nope"), "routes[0].profile", "unknown profile"),
    (lambda r: r["routes"][0]["match"].update(tags={"SeriesDescriptio": "x"}),
     "routes[0].match.tags.SeriesDescriptio", "unknown DICOM keyword"),
    (lambda r: r["routes"][0]["match"].update(modality={"regex": "(CT"}),
     "routes[0].match.modality", "invalid regular expression"),
    (lambda r: r["profiles"].update(bad={"method": "magic"}), "profiles.bad.method",
     "unknown method"),
    (lambda r: r["profiles"].update(bad={"method": "none", "strength": 3}), "profiles.bad.strength",
     "takes no settings"),
    (lambda r: r.update(no_route="bounce"), "no_route", "must be 'reject'"),
    (lambda r: r["partners"].append(dict(r["partners"][0])), "partners[2].name", "duplicate"),
    (lambda r: r["retry"].update(jitter=1.5), "retry.jitter", "[0, 1)"),
])
def test_errors_name_file_key_and_problem(mutate: Any, path: str, problem: str) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "site.yaml")
    assert info.value.source == "site.yaml"
    assert info.value.path == path
    assert problem in info.value.problem
    assert str(info.value).startswith(f"site.yaml: {path}: ")


def test_cli_reports_config_error_in_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {ae_title: GW, allowed_callers: [A], spool_dir: s, prot: 1}\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{bad}: gateway.prot: unknown key" in err


def test_invalid_yaml_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("gateway: [unclosed\n")
    assert main(["check-config", str(broken)]) == 2
    assert "invalid YAML: line" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_relative_spool_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    raw = _raw()
    raw["gateway"]["spool_dir"] = "spool-here"
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).gateway.spool_dir == tmp_path / "spool-here"


def test_protection_settings(tmp_path: Path) -> None:
    raw = _raw()
    raw["protection"] = {"device": "cpu", "threads": 2}
    assert parse_config(raw, "x.yaml").protection.threads == 2
    raw["protection"] = {"device": "tpu"}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "x.yaml")
    assert info.value.path == "protection.device"
    raw = _raw()
    raw["profiles"]["inv"] = {"method": "adversarial_perturbation", "surrogates": ["missing.pt"]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "x.yaml")
    assert info.value.path == "profiles.inv.surrogates" and "not found" in info.value.problem


def test_a_partner_key_that_names_another_partner_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_gateway.seal.keys import init_gateway_keys, new_partner_key

    init_gateway_keys(tmp_path / "keys")
    new_partner_key("acme", tmp_path / "keys")  # the file names carry the partner name too,
    new_partner_key("uni-x", tmp_path / "keys")  # but the check reads the name inside the key
    (tmp_path / "keys" / "acme.pub").rename(tmp_path / "keys" / "partner-a.pub")
    raw = _raw()
    raw["seal"] = {"signing_key": str(tmp_path / "keys" / "gateway-signing.key"),
                   "uid_secret": str(tmp_path / "keys" / "uid-secret.key")}
    raw["partners"][0]["key"] = str(tmp_path / "keys" / "partner-a.pub")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert raw["partners"][0]["name"] == "uni-x"
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}: partners[0].key: {tmp_path / 'keys' / 'partner-a.pub'} is the key of " \
           "partner 'acme', not of 'uni-x'" in err
    raw["partners"][0]["key"] = str(tmp_path / "keys" / "uni-x.pub")  # its own key: accepted
    path.write_text(yaml.safe_dump(raw))
    assert main(["check-config", str(path)]) == 0

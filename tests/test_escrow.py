"""Re-identification escrow (issue 13, acceptance c; decision 0021): with ``deidentify.escrow``
the original identifiers travel encrypted to the hospital's escrow key; the hospital key
recovers them, the partner key does not, and the partner's ``restore`` still gives the original
pixels bit for bit and no removed identifier.

The escrow's encryption is checked with ``cryptography``'s HPKE directly (the documented
suite and ``info``), not only through the gateway's own opener.
"""

from __future__ import annotations

import json
import os
import stat
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from deid_check import IDENTIFIERS, SECRET, gateway_config, pseudonym
from gwutil import base_config, partner, running_gateway, sample, send, with_seal
from peers import RecordingSCP
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicom_gateway.cli import main
from dicom_gateway.config import parse_config
from dicom_gateway.deid import Deidentifier, parse_deidentify
from dicom_gateway.deid.escrow import (
    CREATOR,
    EscrowError,
    EscrowKey,
    load_escrow_private,
    new_escrow_key,
    open_escrow,
    read_escrow,
    write_escrow,
)
from dicom_gateway.errors import ConfigError, KeyFileError
from dicom_gateway.seal.block import GROUP
from dicom_gateway.seal.keys import load_partner_key
from dicom_gateway.seal.uids import derive_uid

HPKE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
IDENTIFYING = ("DOE^JANE", "MRN-4711-X", "19580317", "ACC-98765", "HOUSE^GREGORY", "TECH^TINA")


def identified() -> Dataset:
    """CT_small with the shared made-up identifiers, a private block that names the patient
    and an Other Patient IDs item."""
    ds = sample()
    for keyword, value in IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.FrameOfReferenceUID = generate_uid()
    other = Dataset()
    other.PatientID = "OLD-123"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.private_block(0x0031, "ACME SECRET", create=True).add_new(0x01, "LO", "DOE^JANE")
    return ds


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    return f"{tag_for_keyword(keyword):08X}"


def _first(original: dict[str, Any], keyword: str) -> Any:
    value = original[_tag(keyword)]["Value"][0]
    return value["Alphabetic"] if isinstance(value, dict) and "Alphabetic" in value else value


def _written(ds: Dataset) -> Dataset:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


@pytest.fixture
def hospital(tmp_path: Path) -> EscrowKey:
    return new_escrow_key(tmp_path / "escrow", "hospital-escrow")


def _escrowed(key: EscrowKey) -> tuple[Dataset, Dataset]:
    original = identified()
    out = Deidentifier(parse_deidentify({}), SECRET, "acme")(original)
    write_escrow(out, original, key)
    return original, _written(out)


# -- unit ---------------------------------------------------------------------------------------
def test_round_trip_recovers_every_removed_or_replaced_value(hospital: EscrowKey) -> None:
    original, out = _escrowed(hospital)
    opened = open_escrow(out, hospital)
    back = Dataset.from_json(opened["original"])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                    "ReferringPhysicianName", "OperatorsName", "StudyInstanceUID",
                    "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert back[keyword].value == original[keyword].value, keyword
    assert back.OtherPatientIDsSequence[0].PatientID == "OLD-123"  # a removed sequence, whole
    assert back.private_block(0x0031, "ACME SECRET")[0x01].value == "DOE^JANE"  # private
    assert opened["original"]["00020003"]["Value"] == [original.SOPInstanceUID]  # file meta
    assert "PixelData" not in back and "Rows" not in back  # kept, and pixels never
    assert _tag("PatientIdentityRemoved") in opened["added"]
    assert out.PatientID == pseudonym("acme", IDENTIFIERS["PatientID"])
    raw = out.private_block(GROUP, CREATOR)[0x01].value
    header = json.loads(raw)
    assert header["key_id"] == hospital.key_id and header["format"] == "dicom-gateway-escrow/1"
    buffer = BytesIO()
    out.save_as(buffer)
    for value in (*IDENTIFYING, original.StudyInstanceUID, original.SOPInstanceUID):
        assert value.encode() not in buffer.getvalue(), value  # nothing in clear


def test_the_ciphertext_is_hpke_to_the_escrow_key_with_its_id_in_info(hospital: EscrowKey
                                                                      ) -> None:
    _, out = _escrowed(hospital)
    found = read_escrow(out)
    assert found is not None
    ciphertext = found[1]
    assert hospital.private is not None
    info = b"dicom-gateway escrow v1\0" + hospital.key_id.encode()
    plain = HPKE.decrypt(ciphertext, hospital.private, info=info)
    assert len(plain) % 256 == 0 and b"DOE^JANE" in plain  # padded plaintext, the values
    with pytest.raises(InvalidTag):  # another version or key id in info: no plaintext
        HPKE.decrypt(ciphertext, hospital.private, info=b"dicom-gateway escrow v2\0" +
                     hospital.key_id.encode())


def test_neither_another_escrow_key_nor_the_partner_key_opens_it(tmp_path: Path,
                                                                 hospital: EscrowKey) -> None:
    _, out = _escrowed(hospital)
    second = new_escrow_key(tmp_path / "escrow", "second")
    with pytest.raises(EscrowError, match="not encrypted to this key") as caught:
        open_escrow(out, second)
    assert caught.value.reason == "wrong_key"
    # the key id check aside, the other key's decryption fails: the cryptography refuses it
    forged = EscrowKey(hospital.key_id, second.public, second.private)
    with pytest.raises(EscrowError) as caught:
        open_escrow(out, forged)
    assert caught.value.reason == "decrypt_failed"

    raw = with_seal(base_config(tmp_path / "spool", [partner("acme", 11112)], []),
                    tmp_path / "keys")
    assert raw["seal"]
    acme_file = tmp_path / "keys" / "partners" / "acme.key"
    with pytest.raises(KeyFileError, match="a dicom-gateway partner key, not an escrow key"):
        load_escrow_private(acme_file)
    acme = load_partner_key(acme_file)  # its X25519 private key, tried directly
    with pytest.raises(EscrowError) as caught:
        open_escrow(out, EscrowKey(hospital.key_id, acme.public, acme.private))
    assert caught.value.reason == "decrypt_failed"
    found = read_escrow(out)
    assert found is not None
    with pytest.raises(InvalidTag):
        HPKE.decrypt(found[1], acme.private, info=b"dicom-gateway escrow v1\0" +
                     hospital.key_id.encode())


def test_an_altered_escrow_does_not_open(hospital: EscrowKey) -> None:
    _, out = _escrowed(hospital)
    block = out.private_block(GROUP, CREATOR)
    value = bytearray(block[0x02].value)
    value[60] ^= 1
    block[0x02].value = bytes(value)
    with pytest.raises(EscrowError) as caught:
        open_escrow(out, hospital)
    assert caught.value.reason == "decrypt_failed"
    del out[block.get_tag(0x02)]
    with pytest.raises(EscrowError) as caught:
        open_escrow(out, hospital)
    assert caught.value.reason == "no_escrow"


def test_keys_escrow_writes_a_0600_private_key_and_records_the_operator(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = with_seal(base_config(tmp_path / "spool", [partner("acme", 11112)], []),
                    tmp_path / "keys")
    config = tmp_path / "gw.yaml"
    config.write_text(json.dumps(raw))  # JSON is YAML
    assert main(["keys", "escrow", "--out", str(tmp_path / "e"), "--config", str(config)]) == 0
    key, pub = tmp_path / "e" / "hospital-escrow.key", tmp_path / "e" / "hospital-escrow.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    kid = load_escrow_private(key).key_id
    assert f"key id {kid}" in capsys.readouterr().out
    records = [json.loads(line) for f in (tmp_path / "spool" / "audit").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    assert [r["fields"]["key_id"] for r in records if r["event"] == "operator" and
            r["fields"]["action"] == "keys escrow"] == [kid]
    assert main(["keys", "escrow", "--out", str(tmp_path / "e")]) == 1  # never overwritten
    assert "exists" in capsys.readouterr().err
    os.chmod(key, 0o644)
    assert main(["escrow", "open", "--key", str(key), str(tmp_path)]) == 1
    assert "readable by other users" in capsys.readouterr().err


def _config(tmp_path: Path, escrow: Any) -> dict[str, Any]:
    raw = with_seal(base_config(tmp_path / "spool", [partner("acme", 11112)], []),
                    tmp_path / "keys")
    raw["profiles"]["research"] = {"method": "none", "deidentify": {"escrow": escrow}}
    return raw


def test_escrow_path_is_relative_to_the_config_and_checked(tmp_path: Path) -> None:
    new_escrow_key(tmp_path / "conf" / "keys", "hospital-escrow")
    parsed = parse_config(_config(tmp_path, "keys/hospital-escrow.pub"), "gw.yaml",
                          tmp_path / "conf")
    settings = parsed.profiles["research"].deidentify
    assert settings is not None
    assert settings.escrow == str(tmp_path / "conf" / "keys" / "hospital-escrow.pub")
    wrong = {
        "missing.pub": "cannot read the escrow public key",
        "keys/hospital-escrow.key": "a private key: the gateway needs only the escrow public",
        str(tmp_path / "keys" / "partners" / "acme.pub"): "a dicom-gateway partner key",
        str(tmp_path / "keys" / "gateway" / "gateway-signing.pub"): "not an X25519 public key",
        "": "expected the path",
    }
    for value, problem in wrong.items():
        with pytest.raises(ConfigError) as caught:
            parse_config(_config(tmp_path, value), "gw.yaml", tmp_path / "conf")
        assert str(caught.value).startswith("gw.yaml: profiles.research.deidentify.escrow: ")
        assert problem in str(caught.value), value


# -- end to end through the gateway ---------------------------------------------------------
def _open(key: Path, files: list[Path], capsys: pytest.CaptureFixture[str]
          ) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["escrow", "open", "--key", str(key), *map(str, files)])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def _recovered(found: dict[str, Any], original: Dataset) -> None:
    got = found["original"]
    assert _first(got, "PatientName") == IDENTIFIERS["PatientName"]
    assert _first(got, "PatientID") == IDENTIFIERS["PatientID"]
    assert _first(got, "PatientBirthDate") == IDENTIFIERS["PatientBirthDate"]
    assert _first(got, "AccessionNumber") == IDENTIFIERS["AccessionNumber"]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                    "FrameOfReferenceUID"):
        assert _first(got, keyword) == str(original[keyword].value), keyword


def test_protected_sealed_instance_restores_and_only_the_hospital_key_opens_the_escrow(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """De-identify (with escrow), protect (a real method, one step), seal; the partner
    restores bit-exactly and learns no identifier; the hospital recovers them."""
    from importlib.resources import files

    from dicom_gateway.pixels import pixel_digest, read_pixels

    pytest.importorskip("torch")
    surrogate = str(files("dicom_gateway").joinpath("defaults", "pneumonia-cnn-small.pt"))
    escrow = new_escrow_key(tmp_path / "hospital", "hospital-escrow")
    original = identified()
    want = pixel_digest(read_pixels(original).values)
    with RecordingSCP(store_dir=tmp_path / "got") as scp:
        raw = gateway_config(tmp_path, {"acme": scp.port},
                             {"escrow": str(tmp_path / "hospital" / "hospital-escrow.pub")},
                             {"method": "adversarial_perturbation", "surrogates": [surrogate],
                              "steps": 1})
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [original]) == [0]
            assert scp.wait_for_count(1, timeout=120) == 1
    sent_file = next((tmp_path / "got").glob("*.dcm"))
    sent = pydicom.dcmread(sent_file)
    assert pixel_digest(read_pixels(sent).values) != want  # protected
    assert sent.SOPInstanceUID == derive_uid(SECRET, "acme", derive_uid(
        SECRET, "acme", original.SOPInstanceUID))  # de-identified, then the seal's own
    assert read_escrow(sent) is not None
    for value in (*IDENTIFYING, original.StudyInstanceUID, original.SOPInstanceUID):
        assert value.encode() not in sent_file.read_bytes(), value

    keys = tmp_path / "keys"
    partner_key = keys / "partners" / "acme.key"
    assert main(["restore", "--key", str(partner_key), "--gateway-key",
                 str(keys / "gateway" / "gateway-signing.pub"), "--out", str(tmp_path / "back"),
                 str(sent_file)]) == 0
    capsys.readouterr()
    restored_file = next((tmp_path / "back").glob("*.dcm"))
    back = pydicom.dcmread(restored_file)
    assert pixel_digest(read_pixels(back).values) == want  # bit-exact original pixels
    assert back.PatientID == back.PatientName == pseudonym("acme", IDENTIFIERS["PatientID"])
    assert not list(back.group_dataset(GROUP))  # the seal and the escrow both gone
    for value in (*IDENTIFYING, original.StudyInstanceUID, original.SOPInstanceUID):
        assert value.encode() not in restored_file.read_bytes(), value

    code, opened, err = _open(tmp_path / "hospital" / "hospital-escrow.key", [sent_file], capsys)
    assert code == 0, err
    assert opened[0]["key_id"] == escrow.key_id and opened[0]["sop_instance_uid"] == \
        sent.SOPInstanceUID
    _recovered(opened[0], original)
    assert "1 opened, 0 failed" in err

    code, opened, err = _open(partner_key, [sent_file], capsys)  # the partner's key: refused
    assert code == 1 and not opened
    assert "a dicom-gateway partner key, not an escrow key" in err
    assert "Traceback" not in err and "DOE" not in err
    second = new_escrow_key(tmp_path / "other", "second")
    code, opened, err = _open(tmp_path / "other" / "second.key", [sent_file], capsys)
    assert code == 1 and not opened
    assert "not opened (wrong_key): not encrypted to this key" in err and second.key_id in err


def test_a_pass_through_de_identified_instance_carries_the_escrow(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Method ``none``: no seal, the escrow alone in the gateway's group; a file without one
    makes ``escrow open`` exit 3."""
    new_escrow_key(tmp_path / "hospital", "hospital-escrow")
    original = identified()
    with RecordingSCP(store_dir=tmp_path / "got") as scp:
        raw = gateway_config(tmp_path, {"acme": scp.port},
                             {"escrow": str(tmp_path / "hospital" / "hospital-escrow.pub")})
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [original]) == [0]
            assert scp.wait_for_count(1, timeout=30) == 1
    sent_file = next((tmp_path / "got").glob("*.dcm"))
    sent = pydicom.dcmread(sent_file)
    assert sent.SOPInstanceUID == derive_uid(SECRET, "acme", original.SOPInstanceUID)
    assert sent.PatientIdentityRemoved == "YES"
    plain = tmp_path / "plain.dcm"
    original.save_as(plain, enforce_file_format=True)
    code, opened, err = _open(tmp_path / "hospital" / "hospital-escrow.key", [sent_file, plain],
                              capsys)
    assert code == 3, err
    assert len(opened) == 1
    _recovered(opened[0], original)
    assert "not opened (no_escrow)" in err and "1 without escrow" in err

"""The seal (issue 4): keys, signed manifest, encrypted bit-exact restoration, derived UIDs,
and the partner's verify/restore commands."""

from __future__ import annotations

import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from gwutil import base_config, partner, running_gateway, send, uid_secret, with_seal
from peers import OrthancPeer, copy_ct_series, fundus_dicom
from pydicom.dataset import Dataset
from test_pixels import FORMATS, _load

from dicom_gateway.pixels import Pixels, pixel_digest, read_pixels, write_pixels
from dicom_gateway.seal import SealError, load_partner_key, restore, seal, verify
from dicom_gateway.seal.block import CREATOR, GROUP
from dicom_gateway.seal.keys import (
    init_gateway_keys,
    load_gateway_keys,
    load_signing_public,
    new_partner_key,
)
from dicom_gateway.seal.uids import derive_uid


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_gateway.cli", *args],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    init_gateway_keys(root / "gateway")
    new_partner_key("acme", root / "partners")
    new_partner_key("beta", root / "partners", "mlkem768-x25519")
    return root


def _gateway(keys: Path):  # type: ignore[no-untyped-def]
    return load_gateway_keys(keys / "gateway" / "gateway-signing.key",
                             keys / "gateway" / "uid-secret.key")


def _public(keys: Path):  # type: ignore[no-untyped-def]
    return load_signing_public(keys / "gateway" / "gateway-signing.pub")


def _protect(ds: Dataset, seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """A stand-in protection for the envelope tests: a bounded change on a window, clipped."""
    px = read_pixels(ds)
    v = px.values.astype(np.int64)
    rng = np.random.default_rng(seed)
    lo = -(1 << (px.bits_stored - 1)) if px.signed else 0
    hi = (1 << (px.bits_stored - 1)) - 1 if px.signed else (1 << px.bits_stored) - 1
    out = v.copy()
    box = (slice(None), slice(0, max(1, v.shape[1] // 3)), slice(0, max(1, v.shape[2] // 3)))
    out[box] += rng.integers(-3, 4, out[box].shape)
    out = np.clip(out, lo, hi).astype(px.values.dtype)
    return write_pixels(ds, Pixels(out, px.photometric, px.bits_stored)), v - out


def _round_trip(sealed: Dataset, tmp: Path) -> Dataset:
    sealed.save_as(tmp, enforce_file_format=True)
    return pydicom.dcmread(tmp)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_restore_is_bit_exact_for_every_pixel_format(name: str, keys: Path,
                                                     tmp_path: Path) -> None:
    original = _load(name)
    want = pixel_digest(read_pixels(original).values)
    protected, residual = _protect(original)
    for partner_name in ("acme", "beta"):  # X25519 and the ML-KEM-768 hybrid
        key = load_partner_key(keys / "partners" / f"{partner_name}.key")
        sealed = _round_trip(seal(original, protected, residual, "test", {"k": 1},
                                  _gateway(keys), "GW", key), tmp_path / "s.dcm")
        assert sealed.SOPInstanceUID != original.SOPInstanceUID
        assert verify(sealed, _public(keys)).manifest["partner"]["name"] == partner_name
        back = restore(sealed, key, _public(keys))
        assert pixel_digest(read_pixels(back).values) == want
        assert back.SOPInstanceUID == original.SOPInstanceUID
        assert back.get("StudyInstanceUID") == original.get("StudyInstanceUID")
        assert back.get("ImageType") == original.get("ImageType")
        assert "ContributingEquipmentSequence" not in back or \
            back.ContributingEquipmentSequence == original.ContributingEquipmentSequence
        with pytest.raises(KeyError):
            back.private_block(GROUP, CREATOR)


def _protect_cli(tmp_path: Path, keys: Path, profile: dict, inputs: list[Path], out: Path
                 ) -> None:
    raw = base_config(tmp_path / "spool", [partner("acme", 11112, key=str(
        keys / "partners" / "acme.pub"))], [])
    raw["seal"] = {"signing_key": str(keys / "gateway" / "gateway-signing.key"),
                   "uid_secret": str(keys / "gateway" / "uid-secret.key"), "gateway_id": "GW"}
    raw["profiles"]["p"] = profile
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    done = _cli("protect", "--config", str(cfg), "--profile", "p", "--partner", "acme",
                *map(str, inputs), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]


def test_each_method_restores_ct_and_fundus_bit_exactly(tmp_path: Path, keys: Path,
                                                        surrogates: dict[str, Path]) -> None:
    ct = copy_ct_series(tmp_path / "ct")[:2]
    for extra in sorted((tmp_path / "ct").glob("*.dcm"))[2:]:
        extra.unlink()
    fundus = fundus_dicom(tmp_path / "fundus" / "f.dcm")
    palette = tmp_path / "palette" / "p.dcm"  # PALETTE COLOR: protected as RGB, kept whole
    palette.parent.mkdir()
    _load("examples_palette.dcm").save_as(palette, enforce_file_format=True)
    mono, rgb = str(surrogates["pneumonia"]), str(surrogates["retina"])
    # at most one label value per surrogate class (checked at load)
    label = {"label_tag": "Modality", "classes": ["CT", "XC"]}
    label5 = {"label_tag": "Modality", "classes": ["CT", "XC", "US", "OP", "OT"]}
    cases = {
        "adversarial_perturbation": [({"surrogates": [mono], "steps": 2}, ct),
                                     ({"surrogates": [rgb], "steps": 1}, [fundus]),
                                     ({"surrogates": [rgb], "steps": 1}, [palette])],
        "adversarial_watermark": [({"surrogates": [mono], "generations": 2, "population": 8},
                                   ct),
                                  ({"surrogates": [rgb], "generations": 1, "population": 4},
                                   [fundus]),
                                  ({"surrogates": [rgb], "generations": 1, "population": 4,
                                    "texture_steps": 2}, [palette])],
        "unlearnable": [({"surrogates": [mono], **label, "rounds": 1, "train_steps": 1,
                          "pgd_steps": 1}, ct),
                        ({"surrogates": [rgb], **label5, "rounds": 1, "train_steps": 1,
                          "pgd_steps": 1}, [fundus]),
                        ({"surrogates": [rgb], **label5, "rounds": 1, "train_steps": 1,
                          "pgd_steps": 1}, [palette])],
    }
    originals = {str(pydicom.dcmread(f).SOPInstanceUID): pixel_digest(read_pixels(
        pydicom.dcmread(f)).values) for f in [*ct, fundus, palette]}
    report = []
    for method, runs in cases.items():
        for options, inputs in runs:
            what = {str(fundus): "fundus", str(palette): "palette"}.get(str(inputs[0]), "CT")
            out = tmp_path / f"{method}-{what}"
            _protect_cli(tmp_path, keys, {"method": method, **options}, inputs, out)
            sealed = sorted(out.glob("*.dcm"))
            assert len(sealed) == len(inputs)
            done = _cli("verify", "--gateway-key", str(keys / "gateway" / "gateway-signing.pub"),
                        *map(str, sealed))
            assert done.returncode == 0 and done.stdout.count(": VALID issuer GW") == len(sealed)
            assert f"method {method}" in done.stdout
            done = _cli("restore", "--key", str(keys / "partners" / "acme.key"),
                        "--gateway-key", str(keys / "gateway" / "gateway-signing.pub"),
                        *map(str, sealed), "--out", str(out / "restored"))
            assert done.returncode == 0, done.stderr
            payload = pixels = 0
            for f in sealed:
                ds = pydicom.dcmread(f)
                payload += len(ds.private_block(GROUP, CREATOR)[0x03].value)
                pixels += len(ds.PixelData)
            restored = list((out / "restored").glob("*.dcm"))
            assert len(restored) == len(inputs)
            for f in restored:
                back = pydicom.dcmread(f)
                assert originals[str(back.SOPInstanceUID)] == pixel_digest(
                    read_pixels(back).values)
                if what == "palette":
                    assert back.PhotometricInterpretation == "PALETTE COLOR"
                    assert pydicom.dcmread(sealed[0]).PhotometricInterpretation == "RGB"
            report.append(f"{method:26s} {what:6s} payload/pixel bytes {payload / pixels:.4f}")
    print("\n" + "\n".join(report))


def _sealed_ct(tmp_path: Path, keys: Path, partner_name: str = "acme") -> tuple[Dataset, Dataset]:
    original = pydicom.dcmread(copy_ct_series(tmp_path / "ct")[0])
    protected, residual = _protect(original)
    key = load_partner_key(keys / "partners" / f"{partner_name}.pub")
    return original, _round_trip(seal(original, protected, residual, "test", {},
                                      _gateway(keys), "GW", key), tmp_path / "s.dcm")


def test_signature_survives_lossless_transcoding_not_a_changed_pixel(tmp_path: Path,
                                                                     keys: Path) -> None:
    from pydicom.uid import JPEG2000Lossless, RLELossless

    original, _sealed = _sealed_ct(tmp_path, keys)
    for syntax in (RLELossless, JPEG2000Lossless):
        transcoded = pydicom.dcmread(tmp_path / "s.dcm")
        transcoded.compress(syntax, generate_instance_uid=False)  # as a PACS transcodes
        transcoded = _round_trip(transcoded, tmp_path / "t.dcm")
        assert transcoded.file_meta.TransferSyntaxUID == syntax
        verify(transcoded, _public(keys))  # still VALID
        back = restore(transcoded, load_partner_key(keys / "partners" / "acme.key"))
        assert pixel_digest(read_pixels(back).values) == pixel_digest(
            read_pixels(original).values)
    changed = pydicom.dcmread(tmp_path / "s.dcm")
    arr = changed.pixel_array.copy()
    arr[200, 200] += 1
    changed.PixelData = arr.tobytes()
    with pytest.raises(SealError) as err:
        verify(changed, _public(keys))
    assert err.value.reason == "pixels_altered"


def test_one_flipped_bit_is_always_detected(tmp_path: Path, keys: Path) -> None:
    _, sealed = _sealed_ct(tmp_path, keys)
    rng = random.Random(7)
    block = sealed.private_block(GROUP, CREATOR)
    targets = {
        "pixel data": (sealed, 0x7FE00010),
        "manifest": (sealed, block.get_tag(0x01)),
        "signature": (sealed, block.get_tag(0x02)),
        "payload": (sealed, block.get_tag(0x03)),
    }
    tried = detected = 0
    lines = []
    for what, (ds, tag) in targets.items():
        value = ds[tag].value
        raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        hits = 0
        for _ in range(250):
            pos = rng.randrange(len(raw) * 8)
            flipped = bytearray(raw)
            flipped[pos // 8] ^= 1 << (pos % 8)
            copy = pydicom.dcmread(tmp_path / "s.dcm")
            copy[tag].value = (bytes(flipped).decode("latin-1") if isinstance(value, str)
                               else bytes(flipped))
            tried += 1
            try:
                verify(copy, _public(keys))
            except SealError:
                hits += 1
        detected += hits
        lines.append(f"{what}: 250 tried, {hits} detected")
    print(f"\nbit flips: {tried} tried, {detected} detected ({'; '.join(lines)})")
    assert detected == tried


def test_wrong_key_and_tampering_give_distinct_errors(tmp_path: Path, keys: Path) -> None:
    _, _sealed = _sealed_ct(tmp_path, keys)
    sealed_path = tmp_path / "s.dcm"
    stranger = tmp_path / "stranger"
    init_gateway_keys(stranger)
    beta = keys / "partners" / "beta.key"
    out = tmp_path / "out"
    done = _cli("restore", "--key", str(beta), "--no-verify", str(sealed_path), "--out",
                str(out))
    assert done.returncode == 1 and "(wrong_key)" in done.stderr
    assert not list(out.glob("*.dcm"))  # no plaintext written
    done = _cli("verify", "--gateway-key", str(stranger / "gateway-signing.pub"),
                str(sealed_path))
    assert done.returncode == 1 and "INVALID (bad_signature)" in done.stdout
    ds = pydicom.dcmread(sealed_path)
    ds.private_block(GROUP, CREATOR)[0x03].value = b"\0" * 64
    with pytest.raises(SealError) as err:
        restore(ds, load_partner_key(keys / "partners" / "acme.key"), _public(keys))
    assert err.value.reason == "payload_altered"
    plain = pydicom.dcmread(copy_ct_series(tmp_path / "plain")[0])
    with pytest.raises(SealError) as err:
        verify(plain, _public(keys))
    assert err.value.reason == "no_seal"


def test_restore_checks_the_signature_or_says_plainly_it_did_not(
        tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_gateway.cli import main

    _sealed_ct(tmp_path, keys)
    key = str(keys / "partners" / "acme.key")
    with pytest.raises(SystemExit) as usage:  # neither --gateway-key nor --no-verify
        main(["restore", "--key", key, str(tmp_path / "s.dcm"), "--out", str(tmp_path / "a")])
    assert usage.value.code == 2
    assert "--gateway-key" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["restore", "--key", key, "--no-verify", str(tmp_path / "s.dcm"),
                 "--out", str(tmp_path / "b")]) == 0
    said = capsys.readouterr().out
    assert ("restore: 1 instance(s): 1 restored" in said
            and "signature NOT checked (--no-verify)" in said)
    assert "signed" not in said
    assert main(["restore", "--key", key, "--gateway-key",
                 str(keys / "gateway" / "gateway-signing.pub"), str(tmp_path / "s.dcm"),
                 "--out", str(tmp_path / "c")]) == 0
    said = capsys.readouterr().out
    assert f"signature checked with gateway key {_public(keys)[1]}" in said


def test_key_files_are_private_and_the_gateway_refuses_open_ones(tmp_path: Path) -> None:
    done = _cli("keys", "init", "--out", str(tmp_path / "gw"))
    assert done.returncode == 0, done.stderr
    for suite in ("x25519", "mlkem768-x25519"):
        done = _cli("keys", "partner", "--name", f"p-{suite}", "--suite", suite, "--out",
                    str(tmp_path / "partners"))
        assert done.returncode == 0, done.stderr
    private = [tmp_path / "gw" / "gateway-signing.key", tmp_path / "gw" / "uid-secret.key",
               tmp_path / "partners" / "p-x25519.key", tmp_path / "partners" /
               "p-mlkem768-x25519.key"]
    for f in private:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    again = _cli("keys", "init", "--out", str(tmp_path / "gw"))
    assert again.returncode == 1 and "never overwritten" in again.stderr
    raw = base_config(tmp_path / "spool", [partner("p-x25519", 11112, key=str(
        tmp_path / "partners" / "p-x25519.pub"))],  # its own key: the names agree
        [{"name": "r", "match": {}, "to": ["p-x25519"], "profile": "mark"}])
    raw["profiles"]["mark"] = {"method": "adversarial_perturbation",
                               "surrogates": [str(Path(__file__).parents[1] / "dicom_gateway" /
                                                  "defaults" / "pneumonia-cnn-small.pt")]}
    raw["seal"] = {"signing_key": str(tmp_path / "gw" / "gateway-signing.key"),
                   "uid_secret": str(tmp_path / "gw" / "uid-secret.key"), "gateway_id": "GW"}
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert _cli("check-config", str(cfg)).returncode == 0
    (tmp_path / "gw" / "gateway-signing.key").chmod(0o644)
    done = _cli("check-config", str(cfg))
    assert done.returncode == 2 and "seal.signing_key" in done.stderr
    assert "readable by other users" in done.stderr
    (tmp_path / "gw" / "gateway-signing.key").chmod(0o600)
    del raw["partners"][0]["key"]
    cfg.write_text(yaml.safe_dump(raw))
    done = _cli("check-config", str(cfg))
    assert done.returncode == 2 and "partners[0].key" in done.stderr


def test_derived_uids_are_stable_per_partner(tmp_path: Path, keys: Path) -> None:
    original = pydicom.dcmread(copy_ct_series(tmp_path / "ct")[0])
    protected, residual = _protect(original)

    def sealed_for(name: str) -> Dataset:
        key = load_partner_key(keys / "partners" / f"{name}.pub")
        return seal(original, protected, residual, "test", {}, _gateway(keys), "GW", key)

    a1, a2, b = sealed_for("acme"), sealed_for("acme"), sealed_for("beta")
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                 "FrameOfReferenceUID"):
        assert getattr(a1, attr) == getattr(a2, attr)  # re-sending maps the same way
        assert getattr(a1, attr) != getattr(b, attr) != getattr(original, attr)
        assert len(getattr(a1, attr)) <= 64
    assert a1.SOPClassUID == original.SOPClassUID  # standard UIDs are kept
    assert a1.ImageType[0] == "DERIVED"
    assert a1.ContributingEquipmentSequence[-1].Manufacturer == "dicom-gateway"


@pytest.mark.parametrize("method", ["adversarial_perturbation", "adversarial_watermark"])
def test_a_segmentation_on_a_protecting_route_is_sealed_unchanged(tmp_path: Path,
                                                                  method: str) -> None:
    from importlib.resources import files

    from peers import RecordingSCP
    from pydicom.data import get_testdata_file

    seg_file = get_testdata_file("liver_1frame.dcm")  # a real 1-bit BINARY SEG (DCMTK-made)
    assert seg_file is not None
    original = pydicom.dcmread(seg_file)
    assert original.BitsAllocated == 1
    surrogate = str(files("dicom_gateway").joinpath("defaults", "pneumonia-cnn-small.pt"))
    with RecordingSCP(store_dir=tmp_path / "received") as scp:
        raw = base_config(tmp_path / "spool", [partner("recorder", scp.port)],
                          [{"name": "all", "match": {}, "to": ["recorder"], "profile": "p"}])
        raw["profiles"]["p"] = {"method": method, "surrogates": [surrogate]}
        with_seal(raw, tmp_path / "keys")
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, [original]) == [0]
            assert scp.wait_for_count(1, timeout=60) == 1
    assert not list((tmp_path / "spool" / "quarantine").rglob("*.dcm"))
    secret = uid_secret(tmp_path / "keys")

    def derived(uid: str) -> str:
        return derive_uid(secret, "recorder", uid)

    sent = pydicom.dcmread(next((tmp_path / "received").glob("*.dcm")))
    assert sent.SOPInstanceUID == derived(original.SOPInstanceUID)
    assert sent.StudyInstanceUID == derived(original.StudyInstanceUID)
    source = sent.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0] \
        .SourceImageSequence[0]  # the SEG points at the protected image the partner gets
    assert source.ReferencedSOPInstanceUID == derived(
        original.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        .SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert source.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # standard: kept
    assert sent.PixelData == original.PixelData  # the labels, bit for bit
    assert "BurnedInAnnotation" not in sent or sent.BurnedInAnnotation == original.get(
        "BurnedInAnnotation")
    assert "unchanged" in sent.ContributingEquipmentSequence[-1].ContributionDescription
    public = load_signing_public(tmp_path / "keys" / "gateway" / "gateway-signing.pub")
    manifest = verify(sent, public).manifest
    assert manifest["method"] == method
    assert manifest["parameters"] == {"pixels": "unchanged", "reason": "segmentation"}
    back = restore(sent, load_partner_key(tmp_path / "keys" / "partners" / "recorder.key"),
                   public)
    assert back.SOPInstanceUID == original.SOPInstanceUID
    assert back.PixelData == original.PixelData


def test_sealed_through_orthanc_still_verify_and_restore(tmp_path: Path, orthanc: OrthancPeer,
                                                         surrogates: dict[str, Path]) -> None:
    files = copy_ct_series(tmp_path / "ct")[:3]
    digests = {str(pydicom.dcmread(f).SOPInstanceUID): pixel_digest(
        read_pixels(pydicom.dcmread(f)).values) for f in files}
    raw = base_config(tmp_path / "spool", [partner("orthanc", orthanc.dicom_port, orthanc.aet)],
                      [{"name": "ct", "match": {}, "to": ["orthanc"], "profile": "p"}])
    raw["profiles"]["p"] = {"method": "adversarial_perturbation", "steps": 1,
                            "surrogates": [str(surrogates["pneumonia"])]}
    with_seal(raw, tmp_path / "keys")
    with running_gateway(raw) as gw:
        assert send(gw.receiver.port or 0, files) == [0] * len(files)
        assert orthanc.wait_for_count(len(files), timeout=120) == len(files)
    key = load_partner_key(tmp_path / "keys" / "partners" / "orthanc.key")
    public = load_signing_public(tmp_path / "keys" / "gateway" / "gateway-signing.pub")
    secret = uid_secret(tmp_path / "keys")
    for sop, digest in digests.items():
        stored = orthanc.dataset(derive_uid(secret, "orthanc", sop))  # via the REST API
        verify(stored, public)
        back = restore(stored, key, public)
        assert str(back.SOPInstanceUID) == sop
        assert pixel_digest(read_pixels(back).values) == digest


@pytest.mark.parametrize("method, options, expected_refusals", [
    ("adversarial_perturbation", {"steps": 1}, []),
    # the search per frame stays short over the 30-frame files: one generation, flat logo
    ("adversarial_watermark", {"generations": 1, "population": 4, "texture": 0,
                               "keepout_saliency": 0, "jpeg": False}, []),
    # labels from a tag; the noise is computed at native size, and a 3x3 image is too small
    # for a 28x28 classifier: refused with a reason (quarantined in the gateway)
    ("unlearnable", {"rounds": 1, "train_steps": 1, "pgd_steps": 1,
                     "label_tag": "SeriesDescription"},
     ["SC_rgb_small_odd.dcm: surrogate_mismatch"]),
])
def test_real_methods_restore_every_pixel_format(method: str, options: dict,
                                                 expected_refusals: list[str], keys: Path,
                                                 surrogates: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """Each real method over the pixel-format set, sealed and restored, PALETTE COLOR included
    (protected as RGB; the seal keeps the original indices and palette)."""
    from dicom_gateway.protect.registry import create_method

    def make(key: str, classes: int) -> Any:
        extra = {"classes": [str(c) for c in range(classes)]} if method == "unlearnable" else {}
        return create_method(method, {"surrogates": [str(surrogates[key])], **options, **extra})

    # unlearnable needs the classifier's channels; the label-free methods adapt to the image
    grey, colour = make("pneumonia", 2), (make("retina", 5) if method == "unlearnable" else None)
    key = load_partner_key(keys / "partners" / "acme.key")
    restored, refused = 0, []
    for name in sorted(FORMATS):
        original = _load(name)
        original.SeriesDescription = "1"  # the label, for unlearnable
        original.save_as(tmp_path / "in.dcm", enforce_file_format=True)
        rgb = original.PhotometricInterpretation == "PALETTE COLOR" or \
            original.get("SamplesPerPixel", 1) == 3
        protect = colour if rgb and colour is not None else grey
        outcome = protect([tmp_path / "in.dcm"])[0]
        if outcome.error is not None:
            refused.append(f"{name}: {outcome.error.reason}")
            continue
        assert isinstance(outcome.output, Dataset)
        sealed = _round_trip(seal(original, outcome.output, outcome.residual, method,
                                  dict(outcome.parameters), _gateway(keys), "GW", key),
                             tmp_path / "s.dcm")
        back = restore(sealed, key, _public(keys))
        assert pixel_digest(read_pixels(back).values) == pixel_digest(
            read_pixels(original).values), name
        if original.PhotometricInterpretation == "PALETTE COLOR":
            assert sealed.PhotometricInterpretation == "RGB"
            assert "RedPaletteColorLookupTableData" not in sealed
            for elem in original.group_dataset(0x0028):  # the palette comes back whole
                assert back[elem.tag].value == elem.value, elem.keyword
        restored += 1
    print(f"\n{method}: {restored} formats restored bit-exactly; refused: {refused}")
    assert refused == expected_refusals
    assert restored == len(FORMATS) - len(expected_refusals)

"""The lossless pixel layer: decode -> encode with no change gives bit-identical values for every
pixel format in the test set, with consistent attributes (pydicom reads it back, Orthanc accepts
it). Test set: pydicom's bundled files (pydicom-data needs a download, so it is not used)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from gwutil import send
from peers_orthanc import OrthancPeer
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from dicom_gateway.pixels import PixelError, pixel_digest, read_pixels, write_pixels

FORMATS = {  # file: what it covers
    "CT_small.dcm": "16-bit signed MONOCHROME2, explicit LE",
    "MR_small_bigendian.dcm": "explicit big endian",
    "MR_small_implicit.dcm": "implicit LE",
    "MR_small_RLE.dcm": "RLE lossless",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless",
    "JPEG2000.dcm": "JPEG 2000",
    "693_J2KI.dcm": "JPEG 2000, 14 of 16 bits, signed",
    "JPGExtended.dcm": "JPEG extended, 12 bits",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless, RGB",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, YBR_FULL",
    "SC_rgb_dcmtk_+eb+cy+np.dcm": "JPEG baseline, YBR_FULL_422",
    "GDCMJ2K_TextGBR.dcm": "JPEG 2000, YBR_RCT",
    "JPEGLSNearLossless_16.dcm": "JPEG-LS near-lossless, 16 bits",
    "SC_rgb_small_odd.dcm": "RGB, odd size",
    "ExplVR_BigEnd.dcm": "RGB, big endian, planar configuration 1",
    "SC_ybr_full_422_uncompressed.dcm": "YBR_FULL_422 uncompressed",
    "SC_rgb_rle_16bit_2frame.dcm": "RGB 16-bit multi-frame RLE",
    "SC_rgb_rle_32bit.dcm": "RGB 32-bit RLE",
    "examples_ybr_color.dcm": "30-frame YBR_FULL_422 JPEG",
    "examples_palette.dcm": "PALETTE COLOR",
    "examples_overlay.dcm": "12 of 16 bits",
    "rtdose.dcm": "32-bit multi-frame, implicit",
    "rtdose_rle.dcm": "32-bit multi-frame RLE",
    "MONOCHROME1": "MONOCHROME1 (CT_small relabelled)",
}


def _load(name: str) -> pydicom.Dataset:
    if name == "MONOCHROME1":
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PhotometricInterpretation = "MONOCHROME1"
        return ds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file(name))


def _roundtrip(ds: pydicom.Dataset, syntax: str) -> pydicom.Dataset:
    buf = io.BytesIO()
    write_pixels(ds, read_pixels(ds), syntax).save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["ELE", "RLE"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_round_trip_is_bit_identical(name: str, syntax: str) -> None:
    ds = _load(name)
    before = read_pixels(ds)
    if syntax == RLELossless and before.bits_allocated == 32:
        with pytest.raises(PixelError) as info:  # pydicom's RLE encoder stops at 16 bits
            write_pixels(ds, before, syntax)
        assert info.value.reason == "unsupported_output"
        return
    back = _roundtrip(ds, syntax)
    after = read_pixels(back)
    assert after.values.dtype == before.values.dtype
    assert np.array_equal(after.values, before.values)
    assert pixel_digest(after.values) == pixel_digest(before.values)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.PhotometricInterpretation == before.photometric
    assert back.HighBit == back.BitsStored - 1 and back.BitsStored == before.bits_stored
    assert int(back.get("NumberOfFrames", 1)) == before.values.shape[0]
    # pydicom's own, independent path reads the same stored values
    plain = back.pixel_array if before.photometric != "YBR_FULL" else None
    if plain is not None:
        assert np.array_equal(plain.reshape(before.values.shape), before.values)


def test_digest_ignores_byte_order_not_values() -> None:
    a = np.arange(12, dtype="<u2").reshape(1, 2, 3, 2)
    assert pixel_digest(a) == pixel_digest(a.astype(">u2"))
    b = a.copy()
    b[0, 0, 0, 0] ^= 1
    assert pixel_digest(a) != pixel_digest(b)
    assert pixel_digest(a) != pixel_digest(a.astype("<u4"))


def test_unprocessable_pixels_raise_a_reason() -> None:
    with pytest.raises(PixelError) as info:
        read_pixels(_load("JPEG-lossy.dcm"))  # a known-broken JPEG stream
    assert info.value.reason == "undecodable"
    with pytest.raises(PixelError) as info:
        read_pixels(_load("liver_1frame.dcm"))
    assert info.value.reason == "unsupported_bits"
    ds = _load("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(PixelError) as info:
        read_pixels(ds)
    assert info.value.reason == "no_pixel_data"


def test_orthanc_accepts_every_written_format(tmp_path: Path, orthanc: OrthancPeer) -> None:
    written = []
    for name in FORMATS:
        ds = _load(name)
        out = write_pixels(ds, read_pixels(ds))
        out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):  # some test files lack them
            if not out.get(keyword):
                setattr(out, keyword, generate_uid())
        out.PatientID = out.get("PatientID") or "PIXELTEST"
        written.append(out)
    statuses = send(orthanc.dicom_port, written, calling="GW", called=orthanc.aet)
    assert statuses == [0] * len(written)
    assert orthanc.wait_for_count(len(written), timeout=30) == len(written)
    for out in written:  # and gives back the same stored values
        got = read_pixels(orthanc.dataset(out.SOPInstanceUID))
        assert pixel_digest(got.values) == pixel_digest(read_pixels(out).values)

"""Pixels: DICOM Pixel Data <-> integer arrays in the stored domain, losslessly.

:func:`read_pixels` decodes any transfer syntax pydicom has a decoder for (uncompressed, RLE,
JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 through the pylibjpeg plugins) into an
array of the *stored* values: shape ``(frames, rows, columns, samples)``, the integer type of
BitsAllocated/PixelRepresentation, no rescale, no windowing, no colour conversion beyond what
the codec itself defines (a JPEG 2000 YBR_RCT/ICT image decodes to RGB, PS3.5 §8.2.4; a JPEG
YBR_FULL_422 image decodes to full-resolution YBR_FULL).

:func:`write_pixels` writes such an array back as a new data set whose pixel-describing
attributes (PS3.3 C.7.6.3) match it exactly, uncompressed Explicit VR Little Endian unless
a lossless compressed syntax is asked for. Reading the result gives the same values bit for
bit; :func:`pixel_digest` is the hash the seal signs (decision 0008: decoded values, not bytes).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless

from .errors import PixelError

__all__ = ["PixelError", "Pixels", "pixel_digest", "read_pixels", "write_pixels"]

_NATIVE_OUTPUTS = (ExplicitVRLittleEndian, RLELossless)
_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL")


@dataclass(frozen=True)
class Pixels:
    """Stored pixel values of one instance and how to interpret them."""

    values: np.ndarray  # (frames, rows, columns, samples)
    photometric: str
    bits_stored: int

    @property
    def signed(self) -> bool:
        return self.values.dtype.kind == "i"

    @property
    def bits_allocated(self) -> int:
        return self.values.dtype.itemsize * 8


def read_pixels(ds: Dataset) -> Pixels:
    """Decode ``ds``'s Pixel Data to stored integer values; raise :class:`PixelError`."""
    if "PixelData" not in ds:
        kind = "float" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no"
        raise PixelError(f"{kind}_pixel_data", f"{kind} Pixel Data: nothing to protect losslessly")
    if int(ds.get("BitsAllocated", 0)) not in (8, 16, 32):
        raise PixelError("unsupported_bits",
                         f"BitsAllocated {ds.get('BitsAllocated')} not supported")
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    try:
        values, meta = get_decoder(syntax).as_array(ds, raw=True)
    except NotImplementedError as exc:
        raise PixelError("unsupported_syntax", f"no decoder for {syntax.name}: {exc}") from None
    except Exception as exc:
        raise PixelError("undecodable", f"cannot decode {syntax.name}: {exc}") from None
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))
    if photometric == "YBR_FULL_422":  # codecs return full resolution (PS3.5 §8.2.1)
        photometric = "YBR_FULL"
    if photometric not in _PHOTOMETRICS:
        raise PixelError("unsupported_photometric", f"photometric {photometric} not supported")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.SamplesPerPixel)
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))
    values = values.reshape(frames, int(ds.Rows), int(ds.Columns), samples)
    return Pixels(values=values, photometric=photometric, bits_stored=int(meta.get(
        "bits_stored", ds.BitsStored)))


def write_pixels(ds: Dataset, pixels: Pixels, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A copy of ``ds`` carrying ``pixels``, with every pixel-describing attribute consistent.

    ``syntax`` is Explicit VR Little Endian (default) or RLE Lossless.
    """
    if syntax not in _NATIVE_OUTPUTS:
        names = [s.name for s in _NATIVE_OUTPUTS]
        raise ValueError(f"output transfer syntax must be one of {names}")
    v = pixels.values
    if v.ndim != 4 or v.dtype.kind not in "iu" or v.dtype.itemsize not in (1, 2, 4):
        raise ValueError("expected (frames, rows, columns, samples) integers, "
                         f"got {v.dtype} {v.shape}")
    frames, rows, columns, samples = v.shape
    if syntax == RLELossless and pixels.bits_allocated > 16:
        raise PixelError("unsupported_output", "RLE Lossless output supports up to 16 bits "
                         "allocated here; use Explicit VR Little Endian")
    out = Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            out.add(copy.deepcopy(elem))
    out.file_meta = (FileMetaDataset(copy.deepcopy(ds.file_meta)) if hasattr(ds, "file_meta")
                     else FileMetaDataset())
    out.Rows, out.Columns, out.SamplesPerPixel = rows, columns, samples
    out.PhotometricInterpretation = pixels.photometric
    out.BitsAllocated = pixels.bits_allocated
    out.BitsStored = pixels.bits_stored
    out.HighBit = pixels.bits_stored - 1
    out.PixelRepresentation = int(pixels.signed)
    if samples > 1:
        out.PlanarConfiguration = 0
    elif "PlanarConfiguration" in out:
        del out.PlanarConfiguration
    if frames > 1 or "NumberOfFrames" in ds:
        out.NumberOfFrames = frames
    data = v.astype(v.dtype.newbyteorder("<"), copy=False).tobytes()
    out.PixelData = data + b"\x00" * (len(data) % 2)
    out["PixelData"].VR = "OB" if pixels.bits_allocated == 8 else "OW"
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    if syntax == RLELossless:
        out.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    return out


def pixel_digest(values: np.ndarray) -> str:
    """SHA-256 of stored values, independent of byte order and container (hex)."""
    canonical = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{canonical.dtype.str}{canonical.shape}".encode())
    h.update(canonical.tobytes())
    return h.hexdigest()

"""The fuzz suite's corpus (decision 0025): real data sets to mutate, and how one is sent.

Seeds are pydicom's bundled test files (always there) and, when ``$DICOM_GATEWAY_DATA`` holds
it, the real 18-slice KiTS CT series (read in place, never copied into the repository). A
:class:`Seed` is parsed once; :meth:`Seed.body` encodes it again with fresh Study, Series and
SOP Instance UIDs, so that every case is a distinct instance and an acknowledged one can be
found afterwards. :func:`store_file` writes what a case sends: a Part 10 file whose meta names
the negotiated transfer syntax, followed by the data set bytes exactly as the mutator left
them (pynetdicom sends them unparsed, :data:`pynetdicom._config.STORE_SEND_CHUNKED_DATASET`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from peers_data import CT_SERIES_SUBDIR, shared_data_dir
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom.dsutils import encode

__all__ = ["PYDICOM_SEEDS", "Seed", "ct_seeds", "pydicom_seeds", "store_file", "uid_prefix"]

#: pydicom's bundled files used as seeds: every native and compressed syntax the gateway
#: accepts (implicit, explicit, big endian, deflated, RLE, JPEG, JPEG-LS, JPEG 2000), multi-frame,
#: colour, and data sets without pixels (SR, RT Plan, waveform)
PYDICOM_SEEDS = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
    "JPEG-lossy.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_small_odd.dcm", "SC_rgb_rle_2frame.dcm",
    "image_dfl.dcm", "rtdose.dcm", "liver_1frame.dcm", "693_J2KI.dcm", "reportsi.dcm",
    "rtplan.dcm", "badVR.dcm",
)
_UID_ROOT = "1.2.826.0.1.3680043.10.1525."  # fuzz instances: <root><seed>.<case>.<n>


def uid_prefix(seed: int) -> str:
    """The UID prefix of the instances of one run (``seed``), to tell them apart."""
    return f"{_UID_ROOT}{seed % 100000}."


@dataclass
class Seed:
    """A parsed data set and the transfer syntax it came in."""

    name: str
    ds: Dataset
    syntax: UID

    @property
    def sop_class(self) -> str:
        return str(self.ds.SOPClassUID)

    def body(self, prefix: str, syntax: UID | None = None) -> tuple[bytes, str]:
        """The data set with fresh UIDs under ``prefix`` in ``syntax`` (default: its own);
        returns the bytes and the SOP Instance UID."""
        ts = UID(syntax or self.syntax)
        sop = generate_uid(prefix)
        self.ds.StudyInstanceUID, self.ds.SeriesInstanceUID = generate_uid(prefix), \
            generate_uid(prefix)
        self.ds.SOPInstanceUID = sop
        data = encode(self.ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        if data is None:
            raise ValueError(f"{self.name} cannot be encoded as {ts.name}")
        return data, sop


def _seed(name: str, path: Path | str) -> Seed:
    ds = dcmread(path)
    syntax = ds.file_meta.TransferSyntaxUID
    del ds.file_meta
    return Seed(name, ds, UID(syntax))


def pydicom_seeds() -> list[Seed]:
    """:data:`PYDICOM_SEEDS` that this pydicom bundles (none is downloaded)."""
    seeds = []
    for name in PYDICOM_SEEDS:
        path = get_testdata_file(name, download=False)
        if path is not None:
            seeds.append(_seed(name, str(path)))
    return seeds


def ct_seeds() -> list[Seed] | None:
    """The real CT series (``None`` where ``$DICOM_GATEWAY_DATA`` does not hold it)."""
    base = shared_data_dir()
    if base is None:
        return None
    return [_seed(f"ct/{p.name}", p) for p in sorted((base / CT_SERIES_SUBDIR).glob("*.dcm"))]


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    head = struct.pack("<HH", 0x0002, group_elem) + vr
    if vr in (b"OB", b"UN"):
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def store_file(path: Path, sop_class: str, sop: bytes, syntax: str, body: bytes) -> Path:
    """Write a Part 10 file: meta (explicit VR little endian, written here byte by byte so
    that a hostile SOP Instance UID goes through as it is) and ``body`` unchanged."""
    elements = (_meta_element(0x0001, b"OB", b"\x00\x01")
                + _meta_element(0x0002, b"UI", sop_class.encode())
                + _meta_element(0x0003, b"UI", sop)
                + _meta_element(0x0010, b"UI", syntax.encode())
                + _meta_element(0x0012, b"UI", b"1.2.826.0.1.3680043.10.1525"))
    group_length = struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<HI", 4, len(elements))
    path.write_bytes(b"\x00" * 128 + b"DICM" + group_length + elements + body)
    return path

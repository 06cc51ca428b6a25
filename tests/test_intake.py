"""Issue 15 items 2-4 (decision 0023): what a C-STORE data set may be.

Hostile data sets go over real C-STOREs, their bytes exactly as built here (pynetdicom sends
the file's bytes after its file meta, under the context of the file meta's transfer syntax):
deflate bombs, group 0002 inside the data set, pixel data that is not what the transfer syntax
says, implicit VR under an explicit syntax and the reverse, elements longer than the data.
Each gets a failure status with an ErrorComment naming the problem; nothing of it reaches the
spool or a partner, and valid instances in every syntax on the same association still pass.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from gwutil import GatewayProcess, base_config, metric, partner, running_gateway, sample, scrape
from peers import RecordingSCP
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom import AE, build_context
from pynetdicom.dsutils import encode_file_meta

from dicom_gateway.config import parse_config
from dicom_gateway.errors import ConfigError
from dicom_gateway.reactor_guard import guard

ALL = [{"name": "all", "match": {}, "to": ["recorder"], "profile": "passthrough"}]
MIB = 1 << 20


@pytest.fixture(autouse=True)
def _send_file_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's bytes after its file meta as they are (not decoded); the file
    meta ends where its group length says, so a data set may begin with group 0002 (pynetdicom
    itself would read those elements as more file meta: the attack of item 3)."""
    from pynetdicom import _config, association

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(association, "split_dataset", split_by_group_length)


def split_by_group_length(path: Path) -> tuple[Dataset, int]:
    data = Path(path).read_bytes()
    assert data[128:136] == b"DICM\x02\x00\x00\x00"  # (0002,0000) first
    end = 132 + 12 + struct.unpack_from("<L", data, 140)[0]
    return read_dataset(BytesIO(data[132:end]), False, True), end


class Instance:
    """A C-STORE to send: ``body`` (the data set's bytes, as built) under ``syntax``."""

    def __init__(self, name: str, ds: Dataset, syntax: str, body: bytes | None = None) -> None:
        self.name, self.syntax, self.sop = name, UID(syntax), str(ds.SOPInstanceUID)
        self.sop_class = str(ds.SOPClassUID)
        self.body = body if body is not None else encode(ds, self.syntax)

    def write(self, folder: Path) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class
        meta.MediaStorageSOPInstanceUID = self.sop
        meta.TransferSyntaxUID = self.syntax
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1.1"
        path = folder / f"{self.name}.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + encode_file_meta(meta) + self.body)
        return path


def encode(ds: Dataset, syntax: UID) -> bytes:
    """``ds`` encoded as ``syntax`` says (deflated: raw deflate, as PS3.5 A.5)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax.is_deflated:
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = c.compress(data) + c.flush()
    return data


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def store(port: int, folder: Path, instances: list[Instance]) -> list[tuple[int, str]]:
    """C-STORE each instance's bytes; ``(status, ErrorComment)`` of each answer."""
    wanted = sorted({(i.sop_class, str(i.syntax)) for i in instances})
    ae = AE(ae_title="HOSPITAL_PACS")
    ae.dimse_timeout = 120
    assoc = guard(ae.associate("127.0.0.1", port, ae_title="EGRESS_GW",
                               contexts=[build_context(c, [s]) for c, s in wanted]))
    assert assoc.is_established
    out = []
    try:
        for instance in instances:
            rsp = assoc.send_c_store(instance.write(folder))
            out.append((int(getattr(rsp, "Status", -1)), str(rsp.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return out


def spooled(spool: Path, sop: str) -> list[Path]:
    """Files anywhere in the spool named after ``sop``, and non-empty temporary files."""
    named = [p for p in spool.rglob("*") if sop in p.name]
    return named + [p for p in (spool / "tmp").glob("*") if p.is_file() and p.stat().st_size]


# -- deflate bombs --------------------------------------------------------------------------
def deflated(*parts: bytes | int) -> bytes:
    """Raw deflate of the parts in turn: bytes as given, an int as that many zero bytes, made
    without the zeros in memory (after a full flush, a MiB of zeros deflates to the same ~1 KB
    every time: those bytes are repeated)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = []
    for part in parts:
        if isinstance(part, bytes):
            out.append(c.compress(part))
            continue
        blocks, rest = divmod(part, MIB)
        if blocks >= 2:
            out.append(c.flush(zlib.Z_FULL_FLUSH))
            block = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
            assert c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH) == block
            out.append(block * blocks)
        else:
            rest = part
        out.append(c.compress(bytes(rest)))
    return b"".join(out) + c.flush()


def bomb(name: str, rows: int, columns: int, *rest: bytes | int,
         declared: int | None = None) -> Instance:
    """A CT whose deflated data set inflates to its header, a Pixel Data element declaring
    ``declared`` bytes (default: what the image needs), then ``rest`` (an int: that many
    zeros)."""
    ds = sample("CT_small.dcm")
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    length = rows * columns * 2 if declared is None else declared
    head = encode(ds, ExplicitVRLittleEndian) + struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OW",
                                                            length)
    return Instance(name, ds, DeflatedExplicitVRLittleEndian, deflated(head, *rest))


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_deflate_bombs_are_refused_in_bounded_memory(tmp_path: Path,
                                                     recording_scp: RecordingSCP) -> None:
    limit = 64 * MIB
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ALL,
                      max_dataset_bytes=limit)
    big_header = sample("CT_small.dcm")  # a valid deflated CT with a 200 KB header
    big_header.add_new(0x00091010, "OB", bytes(range(256)) * 800)
    big_header.add_new(0x00090010, "LO", "TEST")
    valid = [Instance("valid_dfl", sample("image_dfl.dcm"), DeflatedExplicitVRLittleEndian),
             Instance("valid_big_header", big_header, DeflatedExplicitVRLittleEndian)]
    bombs = {  # name: (instance, ErrorComment)
        "1mb": (bomb("1mb", 16384, 32768, 1 << 30),  # honest: a 1 GiB image of zeros
                f"Pixel Data over gateway.max_dataset_bytes ({limit})"),
        "10mb": (bomb("10mb", 512, 512, 10 << 30, declared=0xFFFFFFFE),
                 f"Pixel Data over gateway.max_dataset_bytes ({limit})"),
        "zeros_after": (bomb("zeros_after", 512, 512, 1 << 30),  # 0.5 MiB image, 1 GiB zeros
                        "element (0000,0000) after Pixel Data"),
        "padding_after": (bomb("padding_after", 512, 512, 512 << 10,  # then 1 GiB "padding"
                               struct.pack("<HH2s2xL", 0xFFFC, 0xFFFC, b"OB", 0xFFFFFFF0), 1 << 30),
                          "element (FFFC,FFFC) over gateway.max_dataset_bytes"),
    }
    # the worst case: bulk outside the pixel data (here in a sequence of undefined length after
    # it) is kept while it is inflated, up to the limit
    worst = bomb("sequence_after", 512, 512, 512 << 10, struct.pack(
        "<HH2s2xLHHL", 0xFFFA, 0xFFFA, b"SQ", 0xFFFFFFFF, 0xFFFE, 0xE000, 0xFFFFFFFF), 1 << 30)
    sizes = {n: len(b.body) for n, (b, _) in bombs.items()}
    assert sizes["1mb"] < 1.1 * MIB and 9 * MIB < sizes["10mb"] < 11 * MIB, sizes
    with GatewayProcess(raw, tmp_path) as gw:
        assert gw.proc is not None
        assert store(gw.port, tmp_path, valid) == [(0, ""), (0, "")]  # warm: the code is loaded
        before = vm_hwm(gw.proc.pid)
        answers = store(gw.port, tmp_path, [b for b, _ in bombs.values()])
        middle = vm_hwm(gw.proc.pid)
        answers += store(gw.port, tmp_path, [worst])
        after = vm_hwm(gw.proc.pid)
        assert recording_scp.wait_for_count(2, timeout=30) == 2
        samples = scrape(gw.metrics_port)
    assert answers == [(0xC000, comment) for _, comment in bombs.values()] + [
        (0xC000, f"inflated data set over gateway.max_dataset_bytes ({limit})")]
    # the bombs of the issue cost what receiving their bytes costs (10 MB: ~35 MiB), not more
    assert middle - before < limit, f"peak RSS grew {(middle - before) / MIB:.0f} MiB"
    # the worst case, on top: about the limit
    assert after - middle < limit + 8 * MIB, f"peak RSS grew {(after - middle) / MIB:.0f} MiB"
    assert recording_scp.received_sops == {v.sop for v in valid}
    for instance in [b for b, _ in bombs.values()] + [worst]:
        assert not spooled(tmp_path / "spool", instance.sop)
    assert metric(samples, "dicom_gateway_received_instances_total",
                  calling_ae="HOSPITAL_PACS", status="invalid") == len(bombs) + 1
    print(f"bombs {sizes}: peak RSS {before / MIB:.0f} -> {middle / MIB:.0f} -> "
          f"{after / MIB:.0f} MiB")


# -- data sets that are not what their transfer syntax says ---------------------------------
def _native_ct(**attrs: Any) -> Dataset:
    return sample("CT_small.dcm", **attrs)


def _as_implicit_element(body: bytes, tag: int) -> bytes:
    """``body`` (explicit VR LE) with the short element ``tag`` re-encoded as implicit VR."""
    at = body.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF))
    length = struct.unpack_from("<H", body, at + 6)[0]
    return (body[:at] + struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length)
            + body[at + 8:])


def _mismatches() -> list[tuple[Instance, int, str]]:
    """Each family of the issue with the status and ErrorComment it must get."""
    explicit, implicit = UID(ExplicitVRLittleEndian), UID(ImplicitVRLittleEndian)
    ct = _native_ct()
    no_pixels = _native_ct()
    del no_pixels.PixelData
    jpeg = sample("SC_rgb_jpeg_dcmtk.dcm")
    no_fragment = sample("MR_small_RLE.dcm")
    no_fragment.PixelData = struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # a Basic Offset Table only
    no_rows = _native_ct()
    del no_rows.Rows
    big_endian = ExplicitVRBigEndian.encode() + b"\0"  # the label of item 3's silent corruption
    c = Status
    return [
        (Instance("meta_sop_uid", ct, explicit, element(0x00020003, b"UI", b"1.2.3.4.5.6\0")
                  + encode(ct, explicit)), c.C000,
         "group 0002 element (0002,0003) in the data set"),
        (Instance("meta_syntax", ct, explicit, element(0x00020010, b"UI", big_endian)
                  + encode(ct, explicit)), c.C000,
         "group 0002 element (0002,0010) in the data set"),
        (Instance("native_as_jpeg", ct, JPEGBaseline8Bit, encode(ct, explicit)), c.C000,
         "native Pixel Data under JPEGBaseline8Bit"),
        (Instance("native_as_rle", ct, RLELossless, encode(ct, explicit)), c.C000,
         "native Pixel Data under RLELossless"),
        (Instance("jpeg_as_native", jpeg, explicit), c.C000,
         "encapsulated Pixel Data under ExplicitVRLittleEndian"),
        (Instance("rle_without_fragment", no_fragment, RLELossless), c.C000,
         "encapsulated Pixel Data without a fragment"),
        (Instance("implicit_as_explicit", ct, explicit, encode(ct, implicit)), c.C000,
         "implicit VR data set under ExplicitVRLittleEndian"),
        (Instance("explicit_as_implicit", ct, implicit, encode(ct, explicit)), c.C000,
         "explicit VR data set under ImplicitVRLittleEndian"),
        (Instance("one_implicit_element", ct, explicit,
                  _as_implicit_element(encode(ct, explicit), 0x00080060)), c.C000,
         "implicit VR element (0008,0060) under ExplicitVRLittleEndian"),
        (Instance("element_longer_than_data", no_pixels, explicit, encode(no_pixels, explicit)
                  + struct.pack("<HH2s2xL", 0x7FD0, 0x0010, b"OB", 1_000_000) + bytes(10)),
         c.C000, "element (7FD0,0010) truncated: 10 of 1000000 bytes"),
        (Instance("short_pixel_data", _native_ct(Rows=256), explicit), c.C000,
         "Pixel Data of 32768 bytes, the image needs 65536"),
        (Instance("pixels_without_rows", no_rows, explicit), c.A900,
         "Pixel Data without valid Rows, Columns, Bits Allocated"),
        (Instance("over_the_limit", _native_ct(Rows=1024, Columns=1024,
                                               PixelData=bytes(2 * MIB)), explicit), c.C000,
         "data set over gateway.max_dataset_bytes (1048576)"),
    ]


class Status:
    C000, A900 = 0xC000, 0xA900


def test_data_sets_that_are_not_what_their_syntax_says_are_refused(
        tmp_path: Path, recording_scp: RecordingSCP) -> None:
    raw = base_config(tmp_path / "spool", [partner("recorder", recording_scp.port)], ALL,
                      max_dataset_bytes=MIB)
    valid = [Instance(n, sample(f), s) for n, f, s in (
        ("explicit", "CT_small.dcm", ExplicitVRLittleEndian),
        ("implicit", "MR_small_implicit.dcm", ImplicitVRLittleEndian),
        ("big_endian", "MR_small_bigendian.dcm", ExplicitVRBigEndian),
        ("jpeg_baseline", "SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit),
        ("rle", "MR_small_RLE.dcm", RLELossless),
        ("deflated", "image_dfl.dcm", DeflatedExplicitVRLittleEndian))]
    refused = _mismatches()
    with running_gateway(raw) as gw:
        answers = store(gw.receiver.port or 0, tmp_path, [i for i, _, _ in refused] + valid)
        assert recording_scp.wait_for_count(len(valid), timeout=30) == len(valid)
        samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    expected = [(status, comment) for _, status, comment in refused] + [(0, "")] * len(valid)
    assert dict(zip([i.name for i, _, _ in refused] + [v.name for v in valid], answers,
                    strict=True)) == dict(zip([i.name for i, _, _ in refused]
                                              + [v.name for v in valid], expected, strict=True))
    assert recording_scp.received_sops == {v.sop for v in valid}
    for instance, _, _ in refused:
        assert not spooled(tmp_path / "spool", instance.sop)
    assert metric(samples, "dicom_gateway_received_instances_total",
                  calling_ae="HOSPITAL_PACS", status="invalid") == len(refused)


@pytest.mark.parametrize(("value", "problem"), [(0, "must be greater than 0"),
                                                ("1 GiB", "expected int, got str")])
def test_the_limit_is_a_checked_key(tmp_path: Path, value: Any, problem: str) -> None:
    assert parse_config(base_config(tmp_path, [], []), "site.yaml").gateway.max_dataset_bytes \
        == 1 << 30
    with pytest.raises(ConfigError) as info:
        parse_config(base_config(tmp_path, [], [], max_dataset_bytes=value), "site.yaml")
    assert str(info.value) == f"site.yaml: gateway.max_dataset_bytes: {problem}"

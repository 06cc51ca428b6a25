"""Instances leave in the transfer syntax they arrived in (issue 15 item 7, decision 0024).

JPEG-LS, JPEG Lossless (Process 14 SV1), JPEG 2000 and RLE instances of one SOP class go through a
running gateway (pass-through) after, or before, uncompressed ones of the same class: a partner
that accepts their syntaxes gets each in the syntax it was sent in, Pixel Data element bytes
identical; one that accepts only one uncompressed syntax gets the documented fallback (decoded
pixels, same UIDs), counted in ``reencoded_instances_total``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from gwutil import base_config, metric, partner, running_gateway, scrape, send, wait_metric
from peers import DcmtkStoreSCP, RecordingSCP, pixel_sha256_of
from pydicom.data import get_testdata_file
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dicom_gateway.delivery import PartnerQueue
from dicom_gateway.forward import PartnerLink, syntax_label
from dicom_gateway.metrics import ForwardMetrics
from dicom_gateway.settings import PartnerConfig
from dicom_gateway.spool import Entry, Spool

ALL = [{"name": "all", "match": {}, "to": ["p"], "profile": "passthrough"}]
MR_SMALL = "MR_small.dcm"  # MR Image Storage, Explicit VR Little Endian, 64x64 16-bit
COMPRESSED = {  # local files only: get_testdata_file() would try to download a missing one
    "jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg_2000": "MR_small_jp2klossless.dcm",
    "rle": "MR_small_RLE.dcm",
}


@dataclass(frozen=True)
class Source:
    path: Path
    sop_uid: str
    syntax: str
    pixel_data: bytes  # the Pixel Data element's value, as stored (encapsulated or native)
    pixels: str | None  # SHA-256 of the decoded values


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom's test file {name} is missing"
    return path


def _jpeg_lossless(folder: Path) -> Path:
    """MR_small as JPEG Lossless, Process 14 SV1 (pydicom bundles none; DCMTK's dcmcjpeg)."""
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmcjpeg (DCMTK) is needed to make a JPEG Lossless SV1 instance")
    out = folder / "jpeg_lossless_src.dcm"
    subprocess.run(["dcmcjpeg", "+e1", _testdata(MR_SMALL), str(out)], check=True,
                   capture_output=True, timeout=60)
    return out


def _sources(folder: Path, study: str) -> dict[str, Source]:
    """One instance per kind, fresh SOP Instance UIDs, all MR Image Storage of one study."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"explicit": _testdata(MR_SMALL), "implicit": _testdata("MR_small_implicit.dcm"),
             **{k: _testdata(name) for k, name in COMPRESSED.items()},
             "jpeg_lossless": str(_jpeg_lossless(folder))}
    out = {}
    for kind, original in files.items():
        ds = pydicom.dcmread(original)
        ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        ds = pydicom.dcmread(path)
        out[kind] = Source(path, str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID),
                           ds["PixelData"].value, pixel_sha256_of(ds))
    assert {s.syntax for s in out.values()} == {
        "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70"}
    return out


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _forward(tmp_path: Path, port: int, order: list[Source], wait: Callable[[int], int],
             **extra: Any) -> Samples:
    """Run a pass-through gateway towards the partner on ``port``; send ``order[0]``, wait until
    the partner has it (the association is open with its contexts), then send the rest: the
    condition of the bug. Returns the gateway's metrics once all were forwarded."""
    # one association: every instance shares the link whose contexts the first one set up
    raw = base_config(tmp_path / "spool", [partner("p", port, associations=1,
                                                   idle_release_seconds=60, **extra)], ALL)
    with running_gateway(raw) as gw:
        listener = gw.receiver.port or 0
        assert send(listener, [order[0].path]) == [0]
        assert wait(1) == 1
        assert send(listener, [s.path for s in order[1:]]) == [0] * (len(order) - 1)
        assert wait(len(order)) == len(order)
        ops = gw.endpoint.port  # type: ignore[union-attr]
        assert wait_metric(ops, "dicom_gateway_forwarded_instances_total", len(order),
                           partner="p", result="success", timeout=30) == len(order)
        return scrape(ops)


@pytest.mark.parametrize("first", ["explicit", "jpeg_ls"])
def test_each_instance_reaches_the_partner_in_the_syntax_it_was_sent_in(
        tmp_path: Path, first: str) -> None:
    """``explicit`` first: the compressed ones used to be decoded to the uncompressed context
    already open; ``jpeg_ls`` first: the explicit one used to go as implicit (the fallback
    context, accepted as implicit by this SCP, was the only uncompressed one)."""
    sources = _sources(tmp_path / "src", generate_uid())
    order = [sources[first], *(s for k, s in sources.items() if k != first)]
    # pynetdicom's SCP picks the first of its own syntaxes: implicit VR LE in a multi-syntax
    # context, as many PACS do
    with RecordingSCP(store_dir=tmp_path / "received") as scp:
        samples = _forward(tmp_path, scp.port, order, lambda n: scp.wait_for_count(n, 30))
        received = dict(scp.received)
        for kind, src in sources.items():
            assert received[src.sop_uid] == src.syntax, kind
            got = pydicom.dcmread(tmp_path / "received" / f"{src.sop_uid}.dcm")
            assert got.file_meta.TransferSyntaxUID == src.syntax, kind
            assert got["PixelData"].value == src.pixel_data, f"{kind}: Pixel Data bytes changed"
            assert got.SOPInstanceUID == src.sop_uid
        assert scp.duplicates == 0
        # one association, plus at most one re-negotiation per syntax the open one lacked
        assert scp.connection_count <= len(sources)
    assert not [k for k in samples if k[0] == "dicom_gateway_reencoded_instances_total"]


@pytest.mark.parametrize("accepted", [[ExplicitVRLittleEndian], [ImplicitVRLittleEndian],
                                      [ImplicitVRLittleEndian, ExplicitVRLittleEndian]],
                         ids=["explicit", "implicit", "both-implicit-preferred"])
def test_a_partner_without_the_original_syntax_gets_the_documented_fallback_counted(
        tmp_path: Path, accepted: list[str]) -> None:
    """Only uncompressed syntaxes accepted: compressed instances are decompressed (the same
    decoded pixel values, the same UIDs) and sent in Explicit VR when the partner takes it, even
    if it prefers implicit VR; an uncompressed one it does not take is converted. Each such
    instance is counted under its original and sent syntax; the rest leave as stored."""
    study = generate_uid()
    sources = _sources(tmp_path / "src", study)
    order = [sources["explicit"], *(s for k, s in sources.items() if k != "explicit")]
    fallback = ExplicitVRLittleEndian if ExplicitVRLittleEndian in accepted else accepted[0]
    with RecordingSCP(accept_transfer_syntaxes=accepted, store_dir=tmp_path / "recv") as scp:
        samples = _forward(tmp_path, scp.port, order, lambda n: scp.wait_for_count(n, 30))
        received = dict(scp.received)
        hashes = scp.pixel_hashes
        counted = 0
        for kind, src in sources.items():
            as_stored = src.syntax in accepted
            assert received[src.sop_uid] == (src.syntax if as_stored else fallback), kind
            assert src.pixels is not None
            assert hashes[src.sop_uid] == src.pixels, f"{kind}: pixel values changed"
            got = pydicom.dcmread(tmp_path / "recv" / f"{src.sop_uid}.dcm")
            assert got.SOPInstanceUID == src.sop_uid
            assert got.StudyInstanceUID == study
            n = metric(samples, "dicom_gateway_reencoded_instances_total", partner="p",
                       original=syntax_label(src.syntax), sent=syntax_label(fallback))
            if as_stored:
                assert n == 0, kind
                assert got["PixelData"].value == src.pixel_data
            else:
                assert n == 1, kind
                counted += 1
        assert counted == len(sources) - len(accepted)
        assert sum(v for k, v in samples.items()
                   if k[0] == "dicom_gateway_reencoded_instances_total") == counted


def test_dcmtk_storescp_stores_each_in_the_syntax_it_was_sent_in(tmp_path: Path) -> None:
    """A real peer: DCMTK storescp (``+xa``: all syntaxes, written as received)."""
    sources = _sources(tmp_path / "src", generate_uid())
    order = [sources["explicit"], *(s for k, s in sources.items() if k != "explicit")]
    with DcmtkStoreSCP(tmp_path / "storescp") as scp:
        _forward(tmp_path, scp.port, order, lambda n: scp.wait_for_count(n, 30),
                 ae_title="STORESCP")
        files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
                 for f in scp.files()}
    for kind, src in sources.items():
        got = pydicom.dcmread(files[src.sop_uid])
        assert got.file_meta.TransferSyntaxUID == src.syntax, kind
        assert got["PixelData"].value == src.pixel_data, f"{kind}: Pixel Data bytes changed"


def test_beyond_128_contexts_the_instance_in_hand_is_always_proposed() -> None:
    """Each SOP class costs one context per syntax seen and per uncompressed fallback syntax,
    each alone; classes that would pass 128 are left out, oldest first, never the class of the
    instance being sent."""
    link = PartnerLink(PartnerConfig("p", "PARTNER", "127.0.0.1", 104, "GW"))
    classes = [f"1.2.826.0.1.3680043.10.1.{i}" for i in range(80)]
    for sop_class in classes:
        link._learn(sop_class, ExplicitVRLittleEndian)
    link._learn(classes[0], "1.2.840.10008.1.2.4.80")  # needed last: newest
    contexts = link._contexts(classes[5])
    assert len(contexts) <= 128
    proposed = {str(cx.abstract_syntax) for cx in contexts}
    assert classes[5] in proposed and classes[0] in proposed
    assert classes[1] not in proposed  # the oldest are left out
    assert (classes[0], "1.2.840.10008.1.2.4.80") in link._proposed
    assert (classes[0], ImplicitVRLittleEndian) in link._proposed
    assert str(contexts[0].abstract_syntax) == classes[5]
    alone = [cx for cx in contexts if cx.abstract_syntax == classes[0]]
    assert [list(cx.transfer_syntax) for cx in alone] == [
        [ExplicitVRLittleEndian], ["1.2.840.10008.1.2.4.80"], [ImplicitVRLittleEndian]]


def test_the_queue_tells_a_link_what_comes_next_in_order(tmp_path: Path) -> None:
    """``PartnerQueue._upcoming``: the first entries in send order, read off the heap without
    sorting the whole queue (it runs under the queue's lock)."""
    outbox = tmp_path / "spool" / "outbox" / "p"
    outbox.mkdir(parents=True)
    queue = PartnerQueue(PartnerConfig("p", "PARTNER", "127.0.0.1", 104, "GW"),
                         Spool(tmp_path / "spool"), ForwardMetrics())
    assert queue._upcoming() == []
    names = [f"e{i:03d}" for i in range(100)]
    for name in reversed(names):  # queued newest first: the heap is not in send order
        (outbox / f"{name}.dcm").write_bytes(b"")
        queue.add(Entry(outbox / f"{name}.dcm"))
    upcoming = queue._upcoming()
    order = [item.entry.path for item in sorted(queue._heap)]
    assert upcoming == order[:len(upcoming)] and 0 < len(upcoming) < len(order)

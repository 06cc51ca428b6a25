"""The private block (PS3.5 §7.8) that carries the seal, and the restoration payload's layout.

Block: group ``0x0099``, private creator ``DICOM-GATEWAY SEAL 1`` (see docs/private-tags.md):

====== ==== ==========================================================
offset VR   content
====== ==== ==========================================================
0x01   UT   manifest: canonical JSON (sorted keys, no spaces, ASCII)
0x02   OB   Ed25519 signature of the manifest's bytes (64 bytes)
0x03   OB   HPKE ciphertext of the restoration payload (length in the manifest)
====== ==== ==========================================================

The block is found by its creator: the group may also hold the re-identification escrow, a
block of its own (``DICOM-GATEWAY ESCROW 1``, ``deid/escrow.py``); :func:`remove_block`
removes the whole group, both blocks.

Payload plaintext: 4-byte big-endian header length, the JSON header (original UIDs by derived
UID, original values of the other attributes the gateway changed, residual layout), then the
residual (original - protected, stored values) inside the bounding box of its non-zero support,
little-endian in the smallest signed integer type, LZMA-compressed. When the protected image
cannot express the original's values (PALETTE COLOR written as RGB), the header's ``original``
gives the original's photometric interpretation, bits stored, shape and dtype, the residual is
empty, and the body is the original stored values, little-endian, LZMA-compressed.
"""

from __future__ import annotations

import json
import lzma
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["CREATOR", "GROUP", "Payload", "canonical_json", "pack_payload", "read_block",
           "remove_block", "unpack_payload", "write_block"]

GROUP = 0x0099
CREATOR = "DICOM-GATEWAY SEAL 1"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def write_block(ds: Dataset, manifest: bytes, signature: bytes, payload: bytes) -> None:
    block = ds.private_block(GROUP, CREATOR, create=True)
    block.add_new(0x01, "UT", manifest.decode("ascii"))
    block.add_new(0x02, "OB", signature)
    block.add_new(0x03, "OB", payload)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def read_block(ds: Dataset) -> tuple[bytes, bytes, bytes] | None:
    """(manifest, signature, payload-with-padding) or ``None`` when the instance has no seal.
    Works whether the partner's PACS kept the VRs or sent the elements as UN."""
    try:
        block = ds.private_block(GROUP, CREATOR)
    except KeyError:
        return None
    try:
        manifest = _bytes(block[0x01].value).rstrip(b" \0")
        signature = _bytes(block[0x02].value)
        payload = _bytes(block[0x03].value)
    except KeyError:
        return None
    return manifest, signature, payload


def remove_block(ds: Dataset) -> None:
    for elem in list(ds.group_dataset(GROUP)):
        del ds[elem.tag]


@dataclass
class Payload:
    uids: dict[str, str]  # derived -> original
    attributes: dict[str, Any]  # keyword -> original JSON (pydicom to_json_dict) or None
    residual: np.ndarray  # original - protected, full shape, int64
    original: Any = None  # the original's Pixels (values, photometric, bits) when kept whole


def pack_payload(payload: Payload) -> bytes:
    if payload.original is not None:
        v = payload.original.values
        dtype = v.dtype.newbyteorder("<").str
        header = {"format": "dicom-gateway-payload/1", "uids": payload.uids,
                  "attributes": payload.attributes,
                  "residual": {"shape": [0], "box": [[0, 0]], "dtype": "<i1", "encoding": "lzma"},
                  "original": {"shape": list(v.shape), "dtype": dtype, "encoding": "lzma",
                               "photometric": payload.original.photometric,
                               "bits_stored": int(payload.original.bits_stored)}}
        head = canonical_json(header)
        body = lzma.compress(np.ascontiguousarray(v, dtype=dtype).tobytes(), preset=6)
        return struct.pack(">I", len(head)) + head + body
    r = payload.residual
    nonzero = np.argwhere(r != 0)
    if len(nonzero):
        lo, hi = nonzero.min(0), nonzero.max(0) + 1
    else:
        lo = hi = np.zeros(r.ndim, dtype=int)
    box = r[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    peak = int(np.abs(box).max()) if box.size else 0
    dtype = next(t for t in ("<i1", "<i2", "<i4", "<i8") if peak < 2 ** (8 * int(t[2]) - 1))
    header = {"format": "dicom-gateway-payload/1", "uids": payload.uids,
              "attributes": payload.attributes,
              "residual": {"shape": list(r.shape), "box": [[int(a), int(b)] for a, b in
                                                         zip(lo, hi, strict=True)],
                           "dtype": dtype, "encoding": "lzma"}}
    head = canonical_json(header)
    body = lzma.compress(np.ascontiguousarray(box, dtype=dtype).tobytes(), preset=6)
    return struct.pack(">I", len(head)) + head + body


def unpack_payload(data: bytes) -> Payload:
    (size,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4:4 + size])
    if header.get("format") != "dicom-gateway-payload/1":
        raise ValueError("unknown payload format")
    if "original" in header:
        from ..pixels import Pixels

        o = header["original"]
        values = np.frombuffer(lzma.decompress(data[4 + size:]), dtype=o["dtype"])
        values = values.reshape(o["shape"]).astype(np.dtype(o["dtype"]).newbyteorder("="))
        return Payload(header["uids"], header["attributes"], np.zeros((0,), dtype=np.int64),
                       Pixels(values, o["photometric"], int(o["bits_stored"])))
    layout = header["residual"]
    residual = np.zeros(layout["shape"], dtype=np.int64)
    box = tuple(slice(a, b) for a, b in layout["box"])
    shape = [b - a for a, b in layout["box"]]
    if all(shape):
        residual[box] = np.frombuffer(lzma.decompress(data[4 + size:]),
                                      dtype=layout["dtype"]).reshape(shape)
    return Payload(header["uids"], header["attributes"], residual)

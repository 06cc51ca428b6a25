"""Intake: the data set of a received C-STORE, parsed and checked before anything is stored.

The header is parsed up to the pixel data, which is neither copied nor decoded; a data set
whose elements or pixel data are cut short is refused. A :class:`Refusal` carries the C-STORE
status (PS3.4 B.2.3, PS3.7 C), the metrics label and the ErrorComment the sender gets.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

__all__ = ["Refusal", "Status", "data_set", "read_header", "request"]

# Pixel Data, Float Pixel Data, Double Float Pixel Data
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))


class Status:
    """The C-STORE statuses this SCP answers with (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110  # unexpected error inside the gateway
    NOT_AUTHORIZED = 0x0124  # no route: the gateway is not allowed to take this instance
    OUT_OF_RESOURCES = 0xA700  # spool full or not writable
    DATASET_MISMATCH = 0xA900  # data set does not match the SOP class / request
    CANNOT_UNDERSTAND = 0xC000  # data set cannot be parsed


def request(event: evt.Event) -> C_STORE:
    """The request of an ``EVT_C_STORE`` event (the only event whose request is read here)."""
    return cast(C_STORE, event.request)


def data_set(event: evt.Event) -> BytesIO:
    """The encoded data set of the C-STORE request (pynetdicom always hands one over here)."""
    stream = request(event).DataSet
    if stream is None:
        raise AttributeError("the C-STORE request carries no data set")
    return stream


def read_header(event: evt.Event) -> tuple[Dataset, bool]:
    """Parse the data set up to (not including) its pixel data; check nothing is truncated.

    Returns the header and whether pixel data follows. Routing sees every attribute before the
    pixel data (in practice all of them); the pixel bytes are neither copied nor decoded.
    """
    syntax = event.context.transfer_syntax
    if syntax.is_deflated:  # rare: let pynetdicom inflate and decode it whole
        ds = event.dataset
        return ds, any(tag in ds for tag in _PIXEL_TAGS)
    stream = data_set(event)
    total = stream.seek(0, 2)
    stream.seek(0)
    ds = read_dataset(stream, syntax.is_implicit_VR, syntax.is_little_endian,
                      stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
    for elem in ds.elements():
        value = getattr(elem, "value", None)
        length = getattr(elem, "length", 0xFFFFFFFF)
        if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) != length:
            raise Refusal(Status.CANNOT_UNDERSTAND, "invalid",
                           f"element {elem.tag} truncated: {len(value)} of {length} bytes")
    start = stream.tell()
    stream.seek(0)
    if start >= total:
        return ds, False
    endian = "<" if syntax.is_little_endian else ">"
    with stream.getbuffer() as buf:
        head = bytes(buf[start:start + 12])
        if syntax.is_implicit_VR:
            length, value_at = struct.unpack(endian + "L", head[4:8])[0], start + 8
        elif head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
            length, value_at = struct.unpack(endian + "L", head[8:12])[0], start + 12
        else:
            length, value_at = struct.unpack(endian + "H", head[6:8])[0], start + 8
        if length == 0xFFFFFFFF:  # encapsulated: fragments end with a Sequence Delimiter
            delimiter = struct.pack(endian + "HHL", 0xFFFE, 0xE0DD, 0)
            complete = (bytes(buf[total - 8:total]) == delimiter
                        or delimiter in bytes(buf[value_at:]))
        else:
            complete = total - value_at >= length
    if not complete:
        raise Refusal(Status.CANNOT_UNDERSTAND, "invalid", "Pixel Data truncated")
    return ds, True




class Refusal(Exception):
    """A C-STORE answered with a failure status: ``status``, the metrics ``label`` and the
    ``comment`` sent as ErrorComment."""

    def __init__(self, status: int, label: str, comment: str) -> None:
        super().__init__(comment)
        self.status, self.label, self.comment = status, label, comment

"""The first PDU of an inbound connection, checked before pynetdicom sees it (decision 0022).

The admission gate (:mod:`.admission`) peeks at what a new plain-TCP connection has sent and
asks :func:`read_request` whether it is an A-ASSOCIATE-RQ (PS3.8 §9.3.2): ``None`` while it is
incomplete, a :class:`Request` once it is complete and well formed, :class:`Malformed` as soon
as it cannot be one. Only the structure is checked (item lengths that add up, AE titles of
printable characters, UIDs of 1-64 printable characters): what pynetdicom would refuse with
an error that quotes the value (a 60 KB UID), or could not parse at all. Negotiation itself is
left to pynetdicom.

:func:`reject_pdu` and :func:`abort_pdu` are the answers the gate sends itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["HEADER", "MAX_PEEK", "Malformed", "Request", "abort_pdu", "needed", "read_request",
           "reject_pdu"]

HEADER = 6  # PDU type, reserved, 4-byte length
_FIXED = 68  # protocol version .. the 32 reserved bytes, before the variable items
#: the most of an A-ASSOCIATE-RQ the gate reads ahead of pynetdicom; a longer one (a large
#: user identity) is handed over unchecked once this much has arrived
MAX_PEEK = 64 * 1024
_UID_ITEMS = {0x10: "application context", 0x30: "abstract syntax", 0x40: "transfer syntax",
              0x52: "implementation class UID"}
_UID_PREFIXED = (0x54, 0x56, 0x57)  # sub-items that start with a 2-byte UID length and a UID


class Malformed(ValueError):
    """Not an A-ASSOCIATE-RQ; the message is a fixed phrase (never a value from the wire)."""


@dataclass(frozen=True)
class Request:
    """An A-ASSOCIATE-RQ that arrived whole (``checked``) or in its first :data:`MAX_PEEK`
    bytes: its length with the header, and the AE titles (spaces and NULs stripped)."""

    length: int
    calling_ae: str
    called_ae: str
    checked: bool


def needed(data: bytes) -> int:
    """How many bytes of the PDU starting ``data`` to peek at before deciding."""
    if len(data) < HEADER:
        return HEADER
    length: int = struct.unpack_from(">I", data, 2)[0]
    return min(HEADER + length, MAX_PEEK)


def read_request(data: bytes) -> Request | None:
    """``data`` (what has arrived so far) as an A-ASSOCIATE-RQ (module docstring)."""
    if data[:1] != b"\x01" or data[1:2] not in (b"", b"\x00"):
        raise Malformed("not an A-ASSOCIATE-RQ")
    if len(data) < HEADER:
        return None
    length = HEADER + struct.unpack_from(">I", data, 2)[0]
    if length < HEADER + _FIXED:
        raise Malformed("A-ASSOCIATE-RQ shorter than its fixed fields")
    if len(data) < min(length, MAX_PEEK):
        return None
    if not data[7] & 0x01:
        raise Malformed("unsupported protocol version")
    called, calling = _ae(data[10:26]), _ae(data[26:42])
    if length > MAX_PEEK:
        return Request(length, calling, called, checked=False)
    if len(data) > length:
        raise Malformed("data after the A-ASSOCIATE-RQ")
    _items(memoryview(data)[HEADER + _FIXED:length], top=True)
    return Request(length, calling, called, checked=True)


def _ae(raw: bytes) -> str:
    value = raw.strip(b" \x00")
    if not value or any(b < 0x20 or b > 0x7E or b == 0x5C for b in value):
        raise Malformed("invalid AE title")
    return value.decode("ascii")


def _uid(raw: memoryview, what: str) -> None:
    value = bytes(raw).rstrip(b"\x00 ")
    if not 0 < len(value) <= 64 or any(b < 0x20 or b > 0x7E for b in value):
        raise Malformed(f"invalid {what}")


def _items(body: memoryview, top: bool) -> list[int]:
    """Walk the items (``top``: of the request; else of a presentation context or the user
    information item), checking their UIDs; returns the item types in order."""
    kinds, offset = [], 0
    while offset < len(body):
        if offset + 4 > len(body):
            raise Malformed("truncated item")
        kind, length = body[offset], struct.unpack_from(">H", body, offset + 2)[0]
        value = body[offset + 4:offset + 4 + length]
        if len(value) != length:
            raise Malformed("item longer than the PDU")
        kinds.append(kind)
        if kind in _UID_ITEMS:
            _uid(value, _UID_ITEMS[kind])
        elif top and kind == 0x20:
            sub = _items(value[4:], top=False) if length >= 4 else []
            if sub.count(0x30) != 1 or 0x40 not in sub:
                raise Malformed("presentation context without one abstract syntax and a "
                                "transfer syntax")
        elif top and kind == 0x50:
            if _items(value, top=False).count(0x51) != 1:
                raise Malformed("user information without one maximum length")
        elif not top and kind in _UID_PREFIXED:
            size = struct.unpack_from(">H", value, 0)[0] if length >= 2 else length
            if 2 + size > length:
                raise Malformed("truncated user information item")
            _uid(value[2:2 + size], "SOP class UID")
        offset += 4 + length
    if top and (kinds.count(0x10) != 1 or 0x20 not in kinds or kinds.count(0x50) != 1):
        raise Malformed("A-ASSOCIATE-RQ without its application context, presentation "
                        "contexts and user information")
    return kinds


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 §9.3.4)."""
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def abort_pdu(reason: int = 0x06) -> bytes:
    """An A-ABORT PDU from the service provider (source 2; ``reason`` 6: invalid PDU parameter
    value) (PS3.8 §9.3.8)."""
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)
